"""``python -m benchmarks engine --protocol grpc`` drives real unary gRPC calls through the
handler in memory, and refuses to report a figure when the calls do not get their response."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from benchmarks import engine


def _args(handler: str) -> argparse.Namespace:
    return argparse.Namespace(
        requests=300, rounds=1, handler=handler, cc=10, protocol="grpc", quick=False,
        compiled=False, instructions=False,
    )  # fmt: skip


@pytest.mark.parametrize("handler", ["qp", "activator", "plain"])
def test_calls_complete_through_each_handler(
    handler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    loop = asyncio.new_event_loop()
    try:
        assert engine._run(_args(handler), loop) == 0
    finally:
        loop.close()
    assert "us/call of Python" in capsys.readouterr().out


def test_a_call_without_its_response_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The largest stream window: grpcio's WINDOW_UPDATE of 5 overflows it, so every stream is
    # reset (FLOW_CONTROL_ERROR) instead of answered.
    def windows() -> bytes:
        settings = (4).to_bytes(2, "big") + (2**31 - 1).to_bytes(4, "big")
        return engine._frame(0x4, 0, 0, settings) + engine._frame(0x4, 0x1, 0, b"")

    monkeypatch.setattr(engine, "_open_windows", windows)
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises((RuntimeError, AssertionError)):
            engine._run(_args("qp"), loop)
    finally:
        loop.close()
