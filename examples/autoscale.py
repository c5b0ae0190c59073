"""A slow app like Knative's ``autoscale`` test image: listens on $PORT.

``/?sleep=100`` answers after 100 ms; ``/?prime=5000`` computes the primes below 5000 (CPU);
``/?bloat=10`` holds 10 MB of memory for the request. Parameters combine.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web


def _primes(n: int) -> int:
    sieve = bytearray([1]) * max(n, 2)
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(n**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(sieve[i * i :: i]))
    return sum(sieve)


async def handle(request: web.Request) -> web.Response:
    q = request.query
    out = []
    bloat = b""
    try:
        if "bloat" in q:
            bloat = b"x" * (int(q["bloat"]) * 1024 * 1024)
            out.append(f"allocated {len(bloat) // (1024 * 1024)} MB")
        if "prime" in q:
            out.append(f"{_primes(int(q['prime']))} primes below {q['prime']}")
        ms = int(q.get("sleep", q.get("ms", "0")))
    except ValueError:
        return web.Response(status=400, text="sleep, prime and bloat take integers\n")
    if ms:
        await asyncio.sleep(ms / 1000)
        out.append(f"slept {ms} ms")
    return web.Response(text=("; ".join(out) or "ok") + "\n")


def main() -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8080")), print=None)


if __name__ == "__main__":
    main()
