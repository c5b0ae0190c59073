"""Differential test of two Knative-compatible queue-proxies: the same generated requests go
through both; what the client gets and what the app sees are compared, differences grouped.

    python tools/differential.py --a queue-proxy --b /path/to/other/queue-proxy [--count 300]
    python tools/differential.py --b queue-proxy --b-env PYTHONPATH=build/compiled
    python tools/differential.py --h2 --b /path/to/other/queue-proxy   # over h2c

Each side is a queue-proxy executable started with Knative's environment in front of its own
recording app (a raw TCP server that records each request's target, header lines, body and
trailers as received, and answers as the request asks through ``X-Diff-Respond``). Requests are
generated from a seed: methods, targets (escapes, raw bytes >= 0x80, characters Go re-escapes),
hop-by-hop and Knative headers, Content-Length and chunked bodies with trailers, HTTP/1.0,
``Expect: 100-continue``, and a few malformed requests. Each goes on its own connection.

Compared per request: the client's status, header lines (``Date`` ignored; names compared
ignoring case unless ``--strict-case``) and body; whether the app saw the request, and its
method, target, headers, body and trailers. ``X-Forwarded-For`` is compared as is (both sides
run on loopback). Differences are grouped by what differs and printed with one example each;
``--json`` writes every observation for a closer look. Exit status: 0 when no difference.
``--h2`` sends HTTP/2 (h2c, prior knowledge) requests to an h2c recording app instead
(tools/differential_h2.py: its requests, app, client and known differences; the comparison,
grouping and report are this module's).

Not part of CI (CI has no second implementation). It runs ours against ours in its unit test,
which exercises the machinery only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import IO, Any

# --------------------------------------------------------------------------- observations

Lines = list[tuple[str, str]]


def _s(b: bytes) -> str:
    return b.decode("latin-1")


@dataclass
class AppView:
    method: str
    target: str
    headers: Lines
    body: str
    trailers: Lines = field(default_factory=list)
    authority: str = ""  # HTTP/2's :authority ("" over HTTP/1, where Host is a header)
    reset: str = ""  # HTTP/2: the stream was reset before it ended (the error code's name)


@dataclass
class Observation:
    """What one request produced on one side."""

    status: int  # 0: no response (connection closed or timed out)
    headers: Lines
    body: str
    app: AppView | None
    kept: bool | None = None  # a second request on the connection was answered (None: not tried)
    # HTTP/2 only (the defaults over HTTP/1): the response's trailers, how the stream ended when
    # it did not end normally ("RST_STREAM PROTOCOL_ERROR", "GOAWAY ...", "closed", "timeout"),
    # and the interim (1xx) responses as "103 link=...".
    trailers: Lines = field(default_factory=list)
    reset: str = ""
    interim: list[str] = field(default_factory=list)


_VOLATILE = frozenset({"date"})
# Headers the tool itself adds to find the request at the app.
_TOOL = frozenset({"x-diff-id", "x-diff-respond"})


def _norm(lines: Lines, *, strict_case: bool) -> list[tuple[str, str]]:
    out = []
    for k, v in lines:
        lk = k.lower()
        if lk in _VOLATILE or lk in _TOOL:
            continue
        out.append((k if strict_case else lk, v))
    return sorted(out)


def compare(a: Observation, b: Observation, *, strict_case: bool = False) -> list[str]:
    """The differences between two observations of the same request, each as a short key
    naming what differs (the grouping key) and how."""
    diffs: list[str] = []
    if a.status != b.status:
        diffs.append(f"client status: {a.status} vs {b.status}")
    if a.reset != b.reset:
        diffs.append(f"client stream end: {a.reset or 'ended'} vs {b.reset or 'ended'}")
    if a.interim != b.interim:
        diffs.append(f"client interim: {a.interim} vs {b.interim}")
    ha, hb = _norm(a.headers, strict_case=strict_case), _norm(b.headers, strict_case=strict_case)
    if ha != hb:
        only_a = sorted({k for k, _ in ha} - {k for k, _ in hb})
        only_b = sorted({k for k, _ in hb} - {k for k, _ in ha})
        if only_a or only_b:
            diffs.append(f"client header names: only a {only_a}, only b {only_b}")
        else:
            changed = sorted({k for (k, v) in ha if (k, v) not in hb})
            diffs.append(f"client header values: {changed}")
    if a.body != b.body:
        diffs.append("client body")
    if _norm(a.trailers, strict_case=strict_case) != _norm(b.trailers, strict_case=strict_case):
        diffs.append("client trailers")
    if a.kept is not None and b.kept is not None and a.kept != b.kept:
        diffs.append(f"connection kept: {a.kept} vs {b.kept}")
    if (a.app is None) != (b.app is None):
        diffs.append(f"app reached: {a.app is not None} vs {b.app is not None}")
        return diffs
    if a.app is None or b.app is None:
        return diffs
    x, y = a.app, b.app
    if x.method != y.method:
        diffs.append("app method")
    if x.target != y.target:
        diffs.append("app target")
    if x.authority != y.authority:
        diffs.append("app authority")
    hx, hy = _norm(x.headers, strict_case=strict_case), _norm(y.headers, strict_case=strict_case)
    if hx != hy:
        only_a = sorted({k for k, _ in hx} - {k for k, _ in hy})
        only_b = sorted({k for k, _ in hy} - {k for k, _ in hx})
        if only_a or only_b:
            diffs.append(f"app header names: only a {only_a}, only b {only_b}")
        else:
            changed = sorted({k for (k, v) in hx if (k, v) not in hy})
            diffs.append(f"app header values: {changed}")
    if x.body != y.body:
        diffs.append("app body")
    if _norm(x.trailers, strict_case=strict_case) != _norm(y.trailers, strict_case=strict_case):
        diffs.append("app trailers")
    if x.reset != y.reset:
        diffs.append(f"app stream end: {x.reset or 'ended'} vs {y.reset or 'ended'}")
    return diffs


# --------------------------------------------------------------------------- known differences
# Differences between ours (a) and Knative's Go queue-proxy (b) that are on purpose (docs/
# queue-proxy.md, "Where it differs from Knative's Go queue-proxy"). Each entry names one and
# gives a function that, when the difference applies to a pair of observations, returns the
# pair with it taken out; a request is explained when nothing is left after the applicable
# entries. With ``--b`` another implementation of ours, they simply never apply.


def _headers_without(lines: Lines, name: str) -> Lines:
    return [(k, v) for k, v in lines if k.lower() != name]


def _has(lines: Lines, name: str) -> bool:
    return any(k.lower() == name for k, _ in lines)


def _content_type_guessed(a: Observation, b: Observation) -> tuple[Observation, Observation]:
    """Go's server guesses a Content-Type from the first body bytes when the app sent none."""
    if (
        a.status == b.status
        and _has(b.headers, "content-type")
        and not _has(a.headers, "content-type")
    ):
        b = replace(b, headers=_headers_without(b.headers, "content-type"))
    return a, b


def _refusal_words(a: Observation, b: Observation) -> tuple[Observation, Observation]:
    """A request both refuse before the app, with the same status: ours names the reason in an
    http.Error body with Content-Length; Go writes the status text and closes."""
    if a.app is None and b.app is None and a.status == b.status and a.status >= 400:
        b = replace(b, headers=a.headers, body=a.body)
    return a, b


def _request_trailers_kept(a: Observation, b: Observation) -> tuple[Observation, Observation]:
    """The trailers of a chunked request reach the app; Go's ReverseProxy loses them (it copies
    the request's trailer map before the body is read)."""
    if a.app is not None and b.app is not None and a.app.trailers and not b.app.trailers:
        a = replace(a, app=replace(a.app, trailers=[]))
    return a, b


def _te_with_cl_refused(a: Observation, b: Observation) -> tuple[Observation, Observation]:
    """Transfer-Encoding together with Content-Length is refused (400), a request-smuggling
    guard (RFC 9112 6.1); Go drops the Content-Length and forwards."""
    if a.status == 400 and a.app is None and "Transfer-Encoding can't be present" in a.body:
        a = b
    return a, b


KNOWN = (
    ("Content-Type guessed by Go", _content_type_guessed),
    ("refusal body names the reason", _refusal_words),
    ("request trailers reach the app", _request_trailers_kept),
    ("Transfer-Encoding with Content-Length refused", _te_with_cl_refused),
)


Known = tuple[
    tuple[str, Callable[[Observation, Observation], tuple[Observation, Observation]]], ...
]


def explain(
    a: Observation, b: Observation, *, strict_case: bool = False, known: Known = KNOWN
) -> tuple[list[str], list[str]]:
    """(known differences that apply, differences they leave unexplained)."""
    reasons = []
    left = compare(a, b, strict_case=strict_case)
    for name, take_out in known:
        if not left:
            break
        a2, b2 = take_out(a, b)
        after = compare(a2, b2, strict_case=strict_case)
        if after != left:
            reasons.append(name)
            a, b, left = a2, b2, after
    return reasons, left


def group(results: list[tuple[str, list[str]]]) -> dict[str, list[str]]:
    """{difference: [request names]} over (request name, differences) pairs."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name, diffs in results:
        for d in diffs:
            groups[d].append(name)
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])))


# --------------------------------------------------------------------------- requests

_RESPONSES = {
    "cl": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
    b"2\r\nok\r\n0\r\nX-Sum: 2\r\n\r\n",
    "204": b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    "404": b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope",
    "500": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom",
    "hop": b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
    b"Content-Length: 2\r\n\r\nok",
}

_TARGETS = [
    b"/", b"/a/b", b"/a?x=1&y=2", b"/%41%2f", b"/a%2Fb", b"/caf\xc3\xa9", b"/?q=\xc3\xbc",
    b"/a|b", b'/a"b', b"/a{b}", b"/a^b", b"/a#frag", b"/a!b(c)*", b"/a+b=c;d@e:f$&,",
    b"/%zz", b"/a%4", b"//double", b"/./a/../b", b"/a?", b"http://h.example/abs?x=1", b"*",
]  # fmt: skip
_HEADER_SETS: list[list[bytes]] = [
    [],
    [b"Connection: X-Drop", b"X-Drop: 1", b"X-Keep: 2"],
    [b"TE: trailers"],
    [b"TE: gzip"],
    [b"X-Forwarded-For: 10.1.1.1"],
    [b"X-Forwarded-For: 10.1.1.1", b"X-Forwarded-For: 10.2.2.2"],
    [b"Forwarded: for=10.0.0.1", b"X-Forwarded-Proto: https"],
    [b"K-Original-Host: original.example"],
    [b"Knative-Serving-Revision: r", b"Knative-Serving-Namespace: n"],
    [b"Keep-Alive: timeout=5", b"Proxy-Connection: keep-alive", b"Upgrade: foo"],
    [b"x-lower-case: v", b"X-Dup: 1", b"X-Dup: 2"],
    [b"X-Utf8: caf\xc3\xa9"],
    [b"Expect: 100-continue"],
    [b"User-Agent: kube-probe/1.30", b"K-Kubelet-Probe: queue"],
    [b"Cookie: a=1", b"Cookie: b=2"],
]
_BAD = [
    b"GET / HTTP/1.1\r\nHost: h\r\nHost: h2\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n X-Fold: 1\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: h\r\n\r\n",
    b"GET /\r\n\r\n",
]


@dataclass
class Generated:
    name: str
    data: bytes


def generate(count: int, seed: int) -> list[Generated]:
    """``count`` requests from ``seed`` (the same list on every run with the same seed)."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        rid = b"X-Diff-Id: %d" % i
        if i % 25 == 24:
            bad = _BAD[(i // 25) % len(_BAD)]
            out.append(Generated(f"{i}:bad{(i // 25) % len(_BAD)}", bad))
            continue
        method = rnd.choice([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"])
        target = rnd.choice(_TARGETS)
        if target == b"*":
            method = b"OPTIONS"
        version = b"HTTP/1.0" if rnd.random() < 0.08 else b"HTTP/1.1"
        headers = list(rnd.choice(_HEADER_SETS))
        respond = rnd.choice(list(_RESPONSES))
        lines = [method + b" " + target + b" " + version, b"Host: diff.example", rid]
        lines.append(b"X-Diff-Respond: " + respond.encode())
        lines += headers
        body = b""
        kind = rnd.choice(["none", "cl", "chunked", "chunked-trailer"])
        if method in (b"POST", b"PUT", b"PATCH") and kind != "none":
            payload = rnd.randbytes(rnd.choice([0, 1, 10, 1000]))
            if kind == "cl" or version == b"HTTP/1.0":
                lines.append(b"Content-Length: %d" % len(payload))
                body = payload
            else:
                lines.append(b"Transfer-Encoding: chunked")
                if kind == "chunked-trailer":
                    lines.append(b"Trailer: x-t")
                body = (b"%x\r\n%b\r\n" % (len(payload), payload)) if payload else b""
                body += b"0\r\n" + (b"X-T: 1\r\n" if kind == "chunked-trailer" else b"") + b"\r\n"
        else:
            kind = "none"
        name = f"{i}:{_s(method)} {target!r} {_s(version)} {respond} body={kind}"
        out.append(Generated(name, b"\r\n".join(lines) + b"\r\n\r\n" + body))
    return out


# --------------------------------------------------------------------------- the app


class Recorder:
    """The recording app: one per side; requests are found by their X-Diff-Id."""

    def __init__(self) -> None:
        self.seen: dict[str, AppView] = {}
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, _, block = head[:-4].partition(b"\r\n")
                method, target, _ = line.split(b" ", 2)
                headers = []
                for h in block.split(b"\r\n"):
                    if h:
                        k, _, v = h.partition(b":")
                        headers.append((_s(k), _s(v.strip())))
                low = {k.lower(): v for k, v in headers}
                body, trailers = b"", []
                if low.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        if size == 0:
                            break
                        body += await reader.readexactly(size)
                        await reader.readexactly(2)
                    while (t := await reader.readuntil(b"\r\n")) != b"\r\n":
                        k, _, v = t[:-2].partition(b":")
                        trailers.append((_s(k), _s(v.strip())))
                elif "content-length" in low:
                    body = await reader.readexactly(int(low["content-length"]))
                view = AppView(_s(method), _s(target), headers, _s(body), trailers)
                self.seen[low.get("x-diff-id", "?")] = view
                resp = _RESPONSES.get(low.get("x-diff-respond", "cl"), _RESPONSES["cl"])
                if method == b"HEAD":
                    resp = resp.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
                writer.write(resp)
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            ValueError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,
        ):
            pass
        finally:
            writer.close()


# --------------------------------------------------------------------------- the client


_AGAIN = b"GET /again HTTP/1.1\r\nHost: diff.example\r\nX-Diff-Id: again\r\n\r\n"


async def send(
    port: int, data: bytes, *, timeout: float = 5.0
) -> tuple[int, Lines, str, bool | None]:
    """Send ``data`` on a new connection; (status, header lines, body) of the final
    response (interim 1xx skipped), reading until the peer closes or the framing ends; then,
    when the response was framed, whether a second request on the same connection is answered
    (None when the response ran until close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        status, headers, body, framed = await _read_response(reader, writer, data, timeout)
        kept: bool | None = None
        if framed and status:
            writer.write(_AGAIN)
            try:
                again = await _read_response(reader, writer, b"", 2.0)
                kept = again[0] == 200
            except (TimeoutError, ConnectionError):
                kept = False
        return status, headers, body, kept
    except (TimeoutError, ConnectionError):
        return 0, [], "", None
    finally:
        writer.close()


async def _read_response(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, timeout: float
) -> tuple[int, Lines, str, bool]:
    """Write ``data``, read one final response: (status, headers, body, framed)."""
    writer.write(data)
    head_req = data.split(b" ", 1)[0] == b"HEAD"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            chunk = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
            if not chunk:
                return 0, [], _s(buf), False
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = []
        for h in lines[1:]:
            k, _, v = h.partition(b":")
            headers.append((_s(k), _s(v.strip())))
        if 100 <= status < 200 and status != 101:
            continue
        break
    low = {k.lower(): v for k, v in headers}
    if head_req or status in (204, 304):
        return status, headers, "", True
    if "content-length" in low:
        n = int(low["content-length"])
        while len(buf) < n:
            chunk = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
            if not chunk:
                break
            buf += chunk
        return status, headers, _s(buf[:n]), True
    chunked = low.get("transfer-encoding") == "chunked"
    while True:  # chunked (kept raw) or until close
        if chunked and buf.endswith(b"\r\n\r\n"):
            break
        try:
            chunk = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
        except TimeoutError:
            break
        if not chunk:
            break
        buf += chunk
    return status, headers, _s(buf), chunked


# --------------------------------------------------------------------------- the proxies


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def knative_env(user_port: int) -> dict[str, str]:
    serving, tls, admin, metrics, user_metrics = _free_ports(5)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CONTAINER_CONCURRENCY": "0",
        "QUEUE_SERVING_PORT": str(serving),
        "QUEUE_SERVING_TLS_PORT": str(tls),
        "USER_PORT": str(user_port),
        "REVISION_TIMEOUT_SECONDS": "30",
        "SERVING_LOGGING_CONFIG": "",
        "SERVING_LOGGING_LEVEL": "error",
        "SERVING_NAMESPACE": "default",
        "SERVING_SERVICE": "diff",
        "SERVING_CONFIGURATION": "diff",
        "SERVING_REVISION": "diff-00001",
        "SERVING_POD": "diff-00001-deployment-0",
        "SERVING_POD_IP": "127.0.0.1",
        # Knative's Go queue-proxy has fixed admin/metrics ports and ignores these
        "QUEUE_ADMIN_PORT": str(admin),
        "QUEUE_METRICS_PORT": str(metrics),
        "QUEUE_USER_METRICS_PORT": str(user_metrics),
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
    }


class Side:
    def __init__(self, name: str, exe: str, extra_env: dict[str, str] | None = None) -> None:
        self.name = name
        self.exe = exe
        self.extra_env = extra_env or {}
        self.rec = Recorder()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None
        self.port = 0

    async def start(self) -> None:
        await self.rec.start()
        env = {**knative_env(self.rec.port), **self.extra_env}
        self.port = int(env["QUEUE_SERVING_PORT"])
        # stderr to a file, not a pipe nobody reads: a proxy that logs every failed request
        # (Go's does) would block on a full pipe and stop answering
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [self.exe], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self.log,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                err = self.log.read().decode(errors="replace")
                raise SystemExit(f"{self.name}: {self.exe} exited at start-up:\n{err}")
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{self.name}: port {self.port} not listening") from None
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.log is not None:
            self.log.close()
        await self.rec.close()

    async def observe(self, i: int, g: Generated) -> Observation:
        status, headers, body, kept = await send(self.port, g.data)
        self.rec.seen.pop("again", None)
        return Observation(status, headers, body, self.rec.seen.pop(str(i), None), kept)


async def run(
    a_exe: str,
    b_exe: str,
    count: int,
    seed: int,
    strict_case: bool,
    a_env: dict[str, str] | None = None,
    b_env: dict[str, str] | None = None,
    *,
    side: type[Side] = Side,
    requests: Callable[[int, int], list[Any]] = generate,
    known: Known = KNOWN,
) -> dict[str, Any]:
    """Run ``requests(count, seed)`` through both sides; ``side``, ``requests`` and ``known``
    are the HTTP/1 ones unless a mode (tools/differential_h2.py) passes its own."""
    a, b = side("a", a_exe, a_env), side("b", b_exe, b_env)
    try:
        await a.start()
        await b.start()
        results = []
        explained: list[tuple[str, list[str]]] = []
        unexplained: list[tuple[str, list[str]]] = []
        observations = []
        for i, g in enumerate(requests(count, seed)):
            oa = await a.observe(i, g)
            ob = await b.observe(i, g)
            diffs = compare(oa, ob, strict_case=strict_case)
            results.append((g.name, diffs))
            if diffs:
                reasons, left = explain(oa, ob, strict_case=strict_case, known=known)
                explained.append((g.name, reasons))
                if left:
                    unexplained.append((g.name, left))
            observations.append({"request": g.name, "a": asdict(oa), "b": asdict(ob)})
    finally:
        await a.close()
        await b.close()
    identical = sum(1 for _, d in results if not d)
    return {
        "count": count,
        "identical": identical,
        "groups": group(results),
        "known": group(explained),
        "unexplained": group(unexplained),
        "unexplained_count": len(unexplained),
        "observations": observations,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", default="queue-proxy", help="first queue-proxy executable")
    p.add_argument("--b", required=True, help="second queue-proxy executable")
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--strict-case", action="store_true", help="compare header name case")
    p.add_argument("--json", help="write every observation to this file")
    p.add_argument(
        "--all", action="store_true", help="list every difference, the known ones included"
    )
    p.add_argument("--exact", action="store_true", help="exit 1 on any difference, known or not")
    p.add_argument(
        "--h2",
        action="store_true",
        help="HTTP/2 cleartext (prior knowledge) requests to an h2c recording app "
        "(tools/differential_h2.py)",
    )
    p.add_argument("--a-env", action="append", default=[], metavar="K=V", help="extra env for a")
    p.add_argument(
        "--b-env",
        action="append",
        default=[],
        metavar="K=V",
        help="extra env for b "
        "(e.g. PYTHONPATH=build/compiled: the mypyc build against the interpreted one)",
    )
    args = p.parse_args(argv)
    envs = [dict(kv.split("=", 1) for kv in items) for items in (args.a_env, args.b_env)]
    mode: dict[str, Any] = {}
    if args.h2:
        # the HTTP/2 mode's module imports this one by name: let it find this copy
        sys.modules.setdefault("differential", sys.modules[__name__])
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import differential_h2

        mode = differential_h2.MODE
    report = asyncio.run(
        run(args.a, args.b, args.count, args.seed, args.strict_case, envs[0], envs[1], **mode)
    )
    count, identical, left = report["count"], report["identical"], report["unexplained_count"]
    print(
        f"{identical} of {count} requests identical; {count - identical - left} differ only in "
        f"known ways; {left} unexplained"
    )
    shown = report["groups"] if args.all else report["unexplained"]
    if report["known"]:
        print("known differences (docs/queue-proxy.md):")
        for reason, names in report["known"].items():
            print(f"{len(names):4d}  {reason}\n      e.g. {names[0]}")
    if shown:
        print("every difference:" if args.all else "unexplained differences:")
        for diff, names in shown.items():
            print(f"{len(names):4d}  {diff}\n      e.g. {names[0]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.exact:
        return 0 if identical == count else 1
    return 0 if left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
