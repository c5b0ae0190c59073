"""Stateful property test (issue 7): the queue-proxy's breaker and stats through the engine.

Random interleavings of what clients, the upstream and the clock do (requests, client
disconnects while queued or served, dials that succeed or fail, responses, resets, timeouts)
against the real :class:`QueueProxyHandler` on the in-memory engine. Invariants: never more than
CC requests upstream, every admitted request holds exactly one breaker admission and one stats
"in" until it ends, and when everything has ended the breaker and the stats are back to zero
(every acquire released exactly once).
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dataplane.breaker import Breaker
from dataplane.stats import RequestStats
from dataplane.timeouts import TimeoutPolicy
from queueproxy.drain import Drainer
from queueproxy.handler import QueueProxyHandler
from queueproxy.readiness import ReadinessProber

from .enginekit import FakeTransport, Kit, ok, request

CC = 2
TIMEOUT = 5.0


class _OrderedSet(dict):  # type: ignore[type-arg]
    """The server's set of timed exchanges, iterated in insertion order: timeouts due in the
    same sweep then fire in a reproducible order (a set's order follows object addresses, and
    hypothesis needs every run of an example to behave the same)."""

    def add(self, item: object) -> None:
        self[item] = None

    def discard(self, item: object) -> None:
        self.pop(item, None)


class QueueProxySlots(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.k = k = Kit()
        k.server.timed = _OrderedSet()  # type: ignore[assignment]
        self.breaker = Breaker(10 * CC, CC, CC)
        self.stats = RequestStats(k.loop.time())
        k.handler = QueueProxyHandler(
            loop=k.loop,  # type: ignore[arg-type]
            pool=k.pool,
            breaker=self.breaker,
            stats=self.stats,
            prober=ReadinessProber([]),
            drainer=Drainer(30.0, loop=k.loop),  # type: ignore[arg-type]
            timeouts=TimeoutPolicy(TIMEOUT),
        )
        self.n = 0

    # -- helpers ---------------------------------------------------------------------------
    def live_clients(self) -> list[FakeTransport]:
        return [c for c in self.k.clients if not c.lost and not c.closing]

    def busy_upstreams(self) -> list[FakeTransport]:
        return [t for t in self.k.upstreams if not t.closing and t.protocol.exchange is not None]

    def live(self) -> int:
        return sum(1 for ex in self.k.exchanges if not ex.done)

    # -- what happens ----------------------------------------------------------------------
    @rule(post=st.booleans())
    def client_sends(self, post: bool) -> None:
        self.n += 1
        c = self.k.client()
        if post:
            c.feed(request(b"/%d" % self.n, b"Content-Length: 3", method=b"POST", body=b"abc"))
        else:
            c.feed(request(b"/%d" % self.n))

    @precondition(lambda self: self.live_clients())
    @rule(data=st.data())
    def client_leaves(self, data: st.DataObject) -> None:
        data.draw(st.sampled_from(self.live_clients())).peer_lost()

    @precondition(lambda self: self.k.pool.dialing)
    @rule(succeed=st.booleans())
    def dial_ends(self, succeed: bool) -> None:
        if succeed:
            self.k.pool.complete_dial()
        else:
            self.k.pool.fail_dial("dial tcp 127.0.0.1:8080: connect: connection refused")

    @precondition(lambda self: self.busy_upstreams())
    @rule(data=st.data(), how=st.sampled_from(["ok", "ok", "reset", "close"]))
    def upstream_answers(self, data: st.DataObject, how: str) -> None:
        t = data.draw(st.sampled_from(self.busy_upstreams()))
        if how == "ok":
            t.feed(ok())
        elif how == "reset":
            t.peer_lost(ConnectionResetError())
        else:
            t.peer_eof()

    @rule(dt=st.sampled_from([0.05, 0.5, 2.0]))
    def time_passes(self, dt: float) -> None:
        self.k.loop.advance(dt)

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def slots_match_live_requests(self) -> None:
        b = self.breaker
        live = self.live()
        assert b.in_use <= CC
        assert b.in_flight == live
        assert self.stats.concurrency == live
        upstream = sum(1 for t in self.k.upstreams if t.protocol.exchange is not None)
        assert upstream <= b.in_use

    def teardown(self) -> None:
        # Everything still open ends by its timeout at the latest.
        self.k.loop.advance(TIMEOUT + 1)
        assert self.live() == 0
        assert (self.breaker.in_flight, self.breaker.in_use, self.breaker.waiting) == (0, 0, 0)
        assert self.stats.concurrency == 0


TestQueueProxySlots = QueueProxySlots.TestCase
TestQueueProxySlots.settings = settings(
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
