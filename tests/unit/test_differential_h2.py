"""tools/differential_h2.py (``differential.py --h2``): request generation, the comparison of
what HTTP/2 adds (stream end, interim responses, trailers, :authority), the known differences,
and the h2 client against the h2c recording app on real sockets (no queue-proxy between them:
the tool itself needs a second implementation and is not part of CI)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


@pytest.fixture(scope="module")
def mods() -> tuple[ModuleType, ModuleType]:
    sys.path.insert(0, str(TOOLS))
    try:
        diff = importlib.import_module("differential")
        h2d = importlib.import_module("differential_h2")
    finally:
        sys.path.remove(str(TOOLS))
    return diff, h2d


def obs(diff: ModuleType, **kw: object) -> object:
    app = diff.AppView("POST", "/a", [(":scheme", "http"), ("x-a", "1")], "b", [], "h")
    base: dict[str, object] = {"status": 200, "headers": [("date", "x")], "body": "ok", "app": app}
    base.update(kw)
    return diff.Observation(**base)


def test_generated_requests_are_reproducible_and_cover_the_cases(
    mods: tuple[ModuleType, ModuleType],
) -> None:
    _, h2d = mods
    reqs = h2d.generate(300, 1)
    assert [(r.headers, r.body, r.trailers) for r in reqs] == [
        (r.headers, r.body, r.trailers) for r in h2d.generate(300, 1)
    ]
    names = {n for r in reqs for n, _ in r.headers}
    assert {b"connection", b"upgrade", b"transfer-encoding", b"te", b"X-Upper"} <= names
    assert {b"knative-serving-revision", b"content-length", b"x-large"} <= names
    assert any(r.trailers for r in reqs)
    assert any(r.empty_data for r in reqs)
    assert any((b"content-type", b"application/grpc") in r.headers for r in reqs)
    paths = {dict(r.headers)[b":path"] for r in reqs}
    assert b"/caf\xc3\xa9" in paths and b"/%zz" in paths
    responds = {dict(r.headers)[b"x-diff-respond"] for r in reqs}
    assert {b"103", b"rst", b"grpc-error", b"grpc-ok", b"trailers", b"big"} <= responds
    # a content-length that does not match the body
    for r in reqs:
        clen = dict(r.headers).get(b"content-length")
        if clen is not None and int(clen) != len(r.body):
            break
    else:
        raise AssertionError("no mismatched content-length")


def test_http2_differences_named(mods: tuple[ModuleType, ModuleType]) -> None:
    diff, _ = mods
    a = obs(diff)
    app_b = diff.AppView("POST", "/a", [(":scheme", "http"), ("x-a", "1")], "b", [], "g", "CANCEL")
    b = obs(
        diff,
        status=0,
        reset="RST_STREAM PROTOCOL_ERROR",
        interim=["103 link=x"],
        trailers=[("grpc-status", "0")],
        app=app_b,
    )
    assert diff.compare(a, b) == [
        "client status: 200 vs 0",
        "client stream end: ended vs RST_STREAM PROTOCOL_ERROR",
        "client interim: [] vs ['103 link=x']",
        "client trailers",
        "app authority",
        "app stream end: ended vs CANCEL",
    ]


def test_known_http2_differences_explained(mods: tuple[ModuleType, ModuleType]) -> None:
    diff, h2d = mods
    known = h2d.KNOWN_H2
    reset = obs(diff, status=0, headers=[], body="", app=None, reset="RST_STREAM PROTOCOL_ERROR")
    go_400 = obs(
        diff, status=400, app=None, body='request header "Connection" is not valid in HTTP/2\n'
    )
    assert diff.explain(reset, go_400, known=known) == (
        ["malformed request reset, Go answers 400"],
        [],
    )
    go_goaway = obs(diff, status=0, headers=[], body="", app=None, reset="GOAWAY PROTOCOL_ERROR")
    assert diff.explain(reset, go_goaway, known=known)[1] == []
    # a 400 the app gave is no refusal
    app_400 = obs(diff, status=400, body="bad")
    assert diff.explain(reset, app_400, known=known)[1] != []
    # Go's 502 for a body shorter than its content-length
    cancelled = diff.AppView("POST", "/a", [], "", [], "h", "CANCEL")
    ours = obs(
        diff, status=0, headers=[], body="", reset="RST_STREAM PROTOCOL_ERROR", app=cancelled
    )
    go_502 = obs(
        diff,
        status=502,
        body="request declared a Content-Length of 11 but only wrote 10 bytes\n",
        app=diff.AppView("POST", "/a", [], "0123456789", [], "h", "CANCEL"),
    )
    assert diff.explain(ours, go_502, known=known) == (["content-length mismatch reset"], [])
    # ... but not when the apps saw different targets
    go_502_elsewhere = obs(
        diff,
        status=502,
        body=go_502.body,
        app=diff.AppView("POST", "/b", [], "", [], "h", "CANCEL"),
    )
    assert diff.explain(ours, go_502_elsewhere, known=known)[1] == ["app target"]
    # content-length: 0 on a bodyless response
    trailers_only = obs(diff, body="", headers=[("grpc-status", "13")])
    go_zero = obs(diff, body="", headers=[("grpc-status", "13"), ("content-length", "0")])
    assert diff.explain(trailers_only, go_zero, known=known)[1] == []
    # an interim response relayed by one side only stays unexplained
    assert diff.explain(obs(diff), obs(diff, interim=["103 link=x"]), known=known)[1] == [
        "client interim: [] vs ['103 link=x']"
    ]


async def test_client_and_recording_app_on_real_sockets(
    mods: tuple[ModuleType, ModuleType],
) -> None:
    """Each answer the app knows, as the client sees it, and what the app recorded."""
    _, h2d = mods
    rec = h2d.H2Recorder()
    await rec.start()
    try:

        def req(i: int, respond: bytes, **kw: object) -> object:
            headers = [
                (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/p?q"),
                (b":authority", b"diff.example"), (b"x-diff-id", b"%d" % i),
                (b"x-diff-respond", respond),
            ]  # fmt: skip
            return h2d.H2Request(f"{i}", headers + kw.pop("extra", []), **kw)  # type: ignore[arg-type,operator]

        o = await h2d.send(
            rec.port, req(1, b"trailers", body=b"x" * 70000, trailers=[(b"x-t", b"1")])
        )
        assert (o.status, o.body, o.trailers, o.reset, o.kept) == (
            200,
            "ok",
            [("x-sum", "2")],
            "",
            True,
        )
        seen = rec.seen.pop("1")
        assert (seen.method, seen.target, seen.authority) == ("POST", "/p?q", "diff.example")
        assert len(seen.body) == 70000 and seen.trailers == [("x-t", "1")]
        assert seen.headers[0] == (":scheme", "http")

        o = await h2d.send(rec.port, req(2, b"103"))
        assert (o.interim, o.status, o.body) == (["103 link=</s.css>; rel=preload"], 200, "ok")

        o = await h2d.send(rec.port, req(3, b"grpc-error"))
        assert (o.status, o.body, o.trailers) == (200, "", [])
        assert ("grpc-status", "13") in o.headers

        o = await h2d.send(rec.port, req(4, b"rst"))
        assert (o.status, o.reset, o.kept) == (0, "RST_STREAM INTERNAL_ERROR", True)

        o = await h2d.send(rec.port, req(5, b"rst-mid"))
        assert (o.status, o.body, o.reset) == (200, "part", "RST_STREAM INTERNAL_ERROR")

        o = await h2d.send(rec.port, req(6, b"big"))
        assert len(o.body) == 102400 and o.reset == ""

        # what HTTP/2 forbids goes out as written (the proxy under test must refuse it)
        o = await h2d.send(rec.port, req(7, b"204", extra=[(b"connection", b"x"), (b"X-Up", b"1")]))
        assert o.status == 204
        assert ("connection", "x") in rec.seen["7"].headers and ("X-Up", "1") in rec.seen[
            "7"
        ].headers
    finally:
        await rec.close()
