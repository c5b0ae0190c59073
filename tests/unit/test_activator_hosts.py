"""The activator's host index: a Host sent as listed is found as it is; any other spelling is
lowered and loses its port first, so a listed name with upper case or a port never matches."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from activator.handler import Activator
from dataplane.handle import RequestHandle
from platforms.base import Revision

HOSTS = ("hello.example.com", "Upper.example.com", "port.example.com:8080", "[::1]")


class Answered(RequestHandle):
    """A request whose local answer is recorded (the resolution step answers 404 itself)."""

    __slots__ = ("answer",)

    def __init__(self, host: bytes) -> None:
        super().__init__(None, b"10.0.0.1", 40000)  # type: ignore[arg-type]  # no server needed
        self.hdr = {b"host": host}
        self.answer: tuple[int, bytes] | None = None

    def respond(
        self, status: int, body: bytes = b"", headers: bytes = b"", *, content_length: bool = True
    ) -> None:
        self.answer = (status, body)


@pytest.fixture
def act() -> Iterator[Activator]:
    loop = asyncio.new_event_loop()
    a = Activator(loop=loop, pod_name="t", send_stats=lambda msgs: None, connected=lambda: True)
    a.registry.revision_updated(Revision("default", "hello-00001", hosts=HOSTS))
    yield a
    a.stop()
    loop.close()


def test_index_holds_names_as_a_request_can_match_them(act: Activator) -> None:
    assert set(act.registry.hosts) == {b"hello.example.com", b"[::1]"}


@pytest.mark.parametrize(
    "host",
    [b"hello.example.com", b"Hello.Example.COM", b"hello.example.com:80", b"[::1]", b"[::1]:8012"],
)
def test_listed_host_in_any_spelling_resolves(act: Activator, host: bytes) -> None:
    ex = Answered(host)
    rs: Any = act._resolve(ex)
    assert ex.answer is None
    assert rs is act.revisions[("default", "hello-00001")]


@pytest.mark.parametrize(
    "host", [b"Upper.example.com", b"upper.example.com", b"port.example.com:8080", b"other.com"]
)
def test_unmatchable_names_get_404(act: Activator, host: bytes) -> None:
    ex = Answered(host)
    assert act._resolve(ex) is None
    assert ex.answer is not None and ex.answer[0] == 404
    assert ex.answer[1].startswith(b"Error getting active endpoint: no revision for host ")


def test_revision_headers_name_the_revision_in_its_namespace(act: Activator) -> None:
    # The Knative-Serving-* headers are looked up by the name's bytes first: a name that two
    # namespaces share must still find each one, and a namespace that does not hold it none.
    act.registry.revision_updated(Revision("other", "hello-00001"))
    act.registry.revision_updated(Revision("third", "only-00001"))
    for ns, name, found in (
        (b"default", b"hello-00001", ("default", "hello-00001")),
        (b"other", b"hello-00001", ("other", "hello-00001")),
        (b"third", b"only-00001", ("third", "only-00001")),
        (b"default", b"only-00001", None),
        (b"missing", b"hello-00001", None),
    ):
        ex = Answered(b"unrelated.example.com")
        ex.hdr[b"knative-serving-namespace"] = ns
        ex.hdr[b"knative-serving-revision"] = name
        rs: Any = act._resolve(ex)
        if found is None:
            assert rs is None and ex.answer is not None and ex.answer[0] == 404
        else:
            assert ex.answer is None and rs is act.revisions[found], (ns, name)
    # a deleted revision leaves the index
    act.registry.revision_deleted(("other", "hello-00001"))
    act.registry.revision_deleted(("default", "hello-00001"))
    ex = Answered(b"unrelated.example.com")
    ex.hdr[b"knative-serving-namespace"] = b"other"
    ex.hdr[b"knative-serving-revision"] = b"hello-00001"
    assert act._resolve(ex) is None and act.registry.by_name.get(b"hello-00001") is None
