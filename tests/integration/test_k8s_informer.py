"""The informer (platforms/kubernetes/informer.py) against the fake API server, through the real
kubernetes-asyncio client over HTTP: list, watch, bookmarks, re-watch, 410 re-list with diff,
back-off (injected sleep and random: no real waiting), synced state, clear errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dataplane.envconfig import ConfigError
from platforms.kubernetes.api import (
    ENDPOINT_SLICES,
    PODS,
    KubeAPI,
    KubeConnectionError,
    KubeForbidden,
)
from platforms.kubernetes.config import connect, wait_for_api
from platforms.kubernetes.informer import Backoff, Informer
from tests.fakekube import FakeKube

from .helpers import eventually, free_ports
from .k8s_helpers import ManualSleep, kube_and_api, pod

Event = tuple[str, str, str]  # (type, name, resourceVersion)


@pytest.fixture
async def kube_api() -> AsyncIterator[tuple[FakeKube, KubeAPI]]:
    async for pair in kube_and_api():
        yield pair


class Events:
    def __init__(self) -> None:
        self.seen: list[Event] = []
        self.olds: list[Any] = []

    def __call__(self, type_: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        md = obj["metadata"]
        self.seen.append((type_, md["name"], md["resourceVersion"]))
        self.olds.append(old)

    def names(self, start: int = 0) -> list[tuple[str, str]]:
        return [(t, n) for t, n, _ in self.seen[start:]]


def informer(api: KubeAPI, events: Events, sleep: ManualSleep | None = None, **kw: Any) -> Informer:
    backoff = Backoff(random=lambda: 0.5)
    return Informer(api, PODS, events, backoff=backoff, sleep=sleep or ManualSleep(auto=True), **kw)


async def started(kube: FakeKube, inf: Informer) -> Informer:
    inf.start()
    assert await inf.wait_synced(5)
    await kube.wait_watchers("pods")
    return inf


async def test_initial_list_then_watch_events(kube_api: tuple[FakeKube, KubeAPI]) -> None:
    kube, api = kube_api
    kube.create("pods", pod("a"))
    kube.create("pods", pod("b", "other"))
    list_rv = str(kube.rv)
    ev = Events()
    inf = informer(api, ev)
    assert not inf.synced
    await started(kube, inf)
    try:
        assert sorted(ev.names()) == [("ADDED", "a"), ("ADDED", "b")]
        assert inf.resource_version == str(kube.rv)
        kube.create("pods", pod("c"))
        kube.patch("pods", "default", "a", {"metadata": {"labels": {"x": "1"}}})
        kube.delete("pods", "other", "b")
        await eventually(lambda: len(ev.seen) == 5, what="watch events")
        assert ev.names(2) == [("ADDED", "c"), ("MODIFIED", "a"), ("DELETED", "b")]
        assert ev.olds[3]["metadata"]["labels"] == {}  # the cached object before the change
        assert set(inf.store) == {("default", "a"), ("default", "c")}
        assert inf.lists == 1 and inf.watches == 1
        w = kube.requests_for("watch", "pods")[-1]
        assert w.query["allowWatchBookmarks"] == "true"
        assert w.query["resourceVersion"] == list_rv
        assert int(w.query["timeoutSeconds"]) == 450  # 300 x (1 + random()), random() = 0.5
    finally:
        await inf.close()


async def test_namespace_and_label_selector(kube_api: tuple[FakeKube, KubeAPI]) -> None:
    kube, api = kube_api
    kube.create("pods", pod("a", app="x"))
    kube.create("pods", pod("b", app="y"))
    kube.create("pods", pod("c", "other", app="x"))
    ev = Events()
    inf = await started(kube, informer(api, ev, namespace="default", label_selector="app=x"))
    try:
        assert ev.names() == [("ADDED", "a")]
        kube.patch("pods", "default", "b", {"metadata": {"labels": {"app": "x"}}})
        kube.patch("pods", "default", "a", {"metadata": {"labels": {"app": "z"}}})
        await eventually(lambda: len(ev.seen) == 3, what="selector events")
        assert ev.names(1) == [("ADDED", "b"), ("DELETED", "a")]
    finally:
        await inf.close()


async def test_paged_list(kube_api: tuple[FakeKube, KubeAPI]) -> None:
    kube, api = kube_api
    for i in range(5):
        kube.create("pods", pod(f"p{i}"))
    ev = Events()
    inf = await started(kube, informer(api, ev, page_size=2))
    try:
        assert sorted(n for _, n in ev.names()) == [f"p{i}" for i in range(5)]
        assert len(kube.requests_for("list", "pods")) == 3
    finally:
        await inf.close()


async def test_closed_watch_is_reopened_without_losing_events(
    kube_api: tuple[FakeKube, KubeAPI],
) -> None:
    kube, api = kube_api
    kube.create("pods", pod("a"))
    ev = Events()
    inf = await started(kube, informer(api, ev))
    try:
        for abort in (False, True):
            before = inf.watches
            await kube.close_watches("pods", abort=abort)
            # these happen while no watch is open: the next watch replays them
            kube.create("pods", pod(f"during-{abort}"))
            kube.patch("pods", "default", "a", {"metadata": {"labels": {"abort": str(abort)}}})
            await eventually(lambda b=before: inf.watches > b, what="re-watch")
            await kube.wait_watchers("pods")
        await eventually(lambda: len(ev.seen) == 5, what="replayed events")
        assert ev.names(1) == [
            ("ADDED", "during-False"),
            ("MODIFIED", "a"),
            ("ADDED", "during-True"),
            ("MODIFIED", "a"),
        ]
        assert inf.lists == 1  # never re-listed
    finally:
        await inf.close()


async def test_bookmark_moves_the_resource_version(kube_api: tuple[FakeKube, KubeAPI]) -> None:
    kube, api = kube_api
    kube.create("pods", pod("a"))
    ev = Events()
    inf = await started(kube, informer(api, ev))
    try:
        rv0 = inf.resource_version
        for i in range(3):  # changes this informer does not see (other resource)
            kube.create("leases", pod(f"l{i}"))
        kube.bookmark()
        await eventually(lambda: inf.resource_version == str(kube.rv), what="bookmark applied")
        assert inf.resource_version != rv0
        # history up to the bookmark is gone: a re-watch from the bookmark needs no re-list
        kube.compact()
        await kube.close_watches("pods")
        await eventually(lambda: inf.watches == 2, what="re-watch")
        await kube.wait_watchers("pods")
        kube.create("pods", pod("b"))
        await eventually(lambda: len(ev.seen) == 2, what="event after bookmark")
        assert inf.lists == 1
        assert kube.requests_for("watch", "pods")[-1].query["resourceVersion"] == str(
            int(kube.rv) - 1
        )
    finally:
        await inf.close()


@pytest.fixture(params=[False, True], ids=["error-event", "http-410"])
async def gone_kube_api(request: pytest.FixtureRequest) -> AsyncIterator[tuple[FakeKube, KubeAPI]]:
    async for pair in kube_and_api(gone_as_http=request.param):
        yield pair


async def test_gone_relists_and_emits_only_the_missing_events(
    gone_kube_api: tuple[FakeKube, KubeAPI],
) -> None:
    kube, api = gone_kube_api
    for n in ("keep", "change", "remove"):
        kube.create("pods", pod(n))
    ev = Events()
    inf = await started(kube, informer(api, ev))
    try:
        await kube.close_watches("pods")
        # while disconnected: a delete, an update and an add; then the history is gone
        kube.delete("pods", "default", "remove")
        kube.patch("pods", "default", "change", {"metadata": {"labels": {"v": "2"}}})
        kube.create("pods", pod("new"))
        kube.compact()
        await eventually(lambda: inf.lists == 2, what="re-list after 410")
        assert sorted(ev.names(3)) == [
            ("ADDED", "new"),
            ("DELETED", "remove"),
            ("MODIFIED", "change"),
        ]
        assert set(inf.store) == {("default", n) for n in ("keep", "change", "new")}
        assert inf.store[("default", "change")]["metadata"]["labels"] == {"v": "2"}
        # and it watches on from the new list
        await kube.wait_watchers("pods")
        kube.delete("pods", "default", "keep")
        await eventually(lambda: ev.names()[-1] == ("DELETED", "keep"), what="watch")
    finally:
        await inf.close()


async def test_server_errors_back_off_with_jitter(kube_api: tuple[FakeKube, KubeAPI]) -> None:
    kube, api = kube_api
    kube.create("pods", pod("a"))
    kube.fail("list", "pods", status=500, times=3)
    sleep = ManualSleep(auto=True)
    ev = Events()
    inf = informer(api, ev, sleep)
    inf.start()
    try:
        assert await inf.wait_synced(5)
        # 0.5 s doubling, times 1 + 0.5 * random() with random() = 0.5
        assert sleep.delays == [0.625, 1.25, 2.5]
        assert inf.lists == 1 and ev.names() == [("ADDED", "a")]
        # a failing watch is retried from where it was, with back-off from the start again
        await kube.wait_watchers("pods")
        kube.fail("watch", "pods", status=503, times=2)
        await kube.close_watches("pods")
        kube.create("pods", pod("b"))
        await eventually(lambda: len(ev.seen) == 2, what="event after watch errors")
        assert sleep.delays[3:] == [0.625, 1.25]
        assert inf.lists == 1
    finally:
        await inf.close()


def test_backoff_is_capped_and_resets() -> None:
    b = Backoff(initial=1, factor=3, maximum=10, jitter=0.2, random=lambda: 1.0)
    assert [b.next() for _ in range(4)] == pytest.approx([1.2, 3.6, 10.8, 12.0])
    b.reset()
    assert b.next() == 1.2


async def test_forbidden_is_a_clear_error_and_recovers(
    kube_api: tuple[FakeKube, KubeAPI],
) -> None:
    kube, api = kube_api
    kube.forbid("list", "endpointslices", namespace="x")
    sleep = ManualSleep()
    inf = Informer(
        api,
        ENDPOINT_SLICES,
        Events(),
        namespace="x",
        sleep=sleep,
        backoff=Backoff(random=lambda: 0),
    )
    inf.start()
    try:
        await eventually(lambda: sleep.waiting == 1, what="back-off after 403")
        err = inf.last_error
        assert isinstance(err, KubeForbidden)
        assert "forbidden: cannot list endpointslices.discovery.k8s.io in namespace x" in str(err)
        assert 'cannot list resource "endpointslices"' in str(err)  # the server's own words
        assert not inf.synced
        kube.allow("list", "endpointslices", namespace="x")
        kube.forbid("watch", "endpointslices", namespace="x")
        sleep.release()
        await eventually(lambda: sleep.waiting == 1, what="back-off after the watch's 403")
        assert inf.synced  # the list worked
        assert "forbidden: cannot watch endpointslices.discovery.k8s.io in namespace x" in str(
            inf.last_error
        )
        assert sleep.delays == [0.5, 0.5]  # the successful list reset the back-off
    finally:
        await inf.close()


async def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    kube = FakeKube()
    kube.port = port  # never started: nothing listens there
    api = await connect(str(kube.write_kubeconfig(tmp_path / "kubeconfig")), request_timeout=2)
    sleep = ManualSleep()
    inf = Informer(api, PODS, Events(), sleep=sleep)
    inf.start()
    try:
        await eventually(lambda: sleep.waiting == 1, what="back-off")
        err = inf.last_error
        assert isinstance(err, KubeConnectionError)
        assert f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}" in str(err)
        assert "list pods in all namespaces" in str(err)
        with pytest.raises(ConfigError, match="not available after 0s: cannot reach"):
            await wait_for_api(api, timeout=0)
    finally:
        await inf.close()
        await api.close()


async def test_kubeconfig_and_missing_configuration(
    tmp_path: Path, kube_api: tuple[FakeKube, KubeAPI]
) -> None:
    kube, _ = kube_api
    kube.create("pods", pod("a"))
    path = kube.write_kubeconfig(tmp_path / "kubeconfig")
    api = await connect(environ={"KUBECONFIG": str(path)})
    try:
        await wait_for_api(api, timeout=0)
        got = await api.list(PODS)
        assert [i["metadata"]["name"] for i in got["items"]] == ["a"]
        assert kube.requests_for("list", "pods")  # the token from the kubeconfig was accepted
    finally:
        await api.close()
    with pytest.raises(ConfigError, match=r"KUBECONFIG: .*nope: no such file"):
        await connect(environ={"KUBECONFIG": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=r"not running in a pod .* KUBECONFIG is not set"):
        await connect(environ={})
