"""The ``h2`` library's connection with our drain semantics, for tests that play an HTTP/2 peer
(the proxy itself runs on :mod:`dataplane.h2frames`; ``h2`` stays the reference)."""

from __future__ import annotations

from h2.connection import ConnectionState, H2Connection
from h2.events import Event
from hyperframe.frame import Frame, GoAwayFrame

__all__ = ["GracefulConnection"]


class GracefulConnection(H2Connection):
    """h2's connection, except that a graceful GOAWAY (NO_ERROR) leaves the streams in flight
    running: h2 closes its state machine on any GOAWAY, so the frames that still belong to
    those streams (and PINGs) would be protocol errors, breaking the peer's graceful drain."""

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        before = self.state_machine.state
        frames, events = super()._receive_goaway_frame(frame)
        if frame.error_code == 0 and before != ConnectionState.CLOSED:
            self.state_machine.state = before
        return frames, events
