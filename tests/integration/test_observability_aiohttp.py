"""The aiohttp parts off the hot path are traced when tracing is on: the activator's stats
websocket (aiohttp client) and the autoscaler's stat server (aiohttp server), through the
OpenTelemetry aiohttp instrumentations. Runs in a child process because the instrumentations
patch aiohttp globally."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, json
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from dataplane.tracing import TracingConfig, instrument_aiohttp, start_tracing

    mem = InMemorySpanExporter()
    tracer = start_tracing(TracingConfig(protocol="stdout"), "test", exporter=mem)
    missing = instrument_aiohttp(tracer, client=True, server=True)

    from activator.statsink import StatSink
    from autoscaler.statserver import StatServer
    from dataplane.statpb import Stat, WireStatMessage

    async def main():
        got = []
        server = StatServer(got.extend)
        port = await server.start("127.0.0.1", 0)
        sink = StatSink(f"ws://127.0.0.1:{port}/")
        await sink.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not sink.connected and loop.time() < deadline:
            await asyncio.sleep(0.01)
        sink.send([WireStatMessage("default", "r", Stat(pod_name="a"))])
        while not got and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await sink.close()
        await server.close()
        return len(got)

    n = asyncio.run(main())
    spans = [
        {"name": s.name, "kind": s.kind.name, "scope": s.instrumentation_scope.name,
         "trace": s.context.trace_id, "parent": s.parent.span_id if s.parent else None,
         "id": s.context.span_id}
        for s in mem.get_finished_spans()
    ]
    print(json.dumps({"missing": missing, "stats": n, "spans": spans}))
    """
)


def test_stats_websocket_client_and_server_spans() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["missing"] == []
    assert out["stats"] == 1
    spans = out["spans"]
    client = [s for s in spans if s["kind"] == "CLIENT"]
    server = [s for s in spans if s["kind"] == "SERVER"]
    assert client and "aiohttp_client" in client[0]["scope"], spans
    assert server and "aiohttp_server" in server[0]["scope"], spans
    # The websocket handshake carried the client's context to the server.
    assert server[0]["trace"] == client[0]["trace"]
    assert server[0]["parent"] == client[0]["id"]
