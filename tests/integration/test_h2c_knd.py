"""A gRPC call from zero in ``knd run``: client -> embedded activator (h2c) -> QP -> app."""

from __future__ import annotations

import grpc
import pytest

from tests.apps import grpc_app

from .knd_helpers import Knd, free_ports

pytestmark = pytest.mark.timeout(60)


async def test_grpc_call_scales_from_zero(tmp_path: object) -> None:
    port, admin = free_ports(2)
    k = Knd(
        [
            "--port", str(port), "--admin-port", str(admin),
            "--name", "greeter", "--initial-scale", "0", "--min-scale", "0",
            "--", "python", "-m", "tests.apps.grpc_app",
        ],
        test_dir=tmp_path,  # type: ignore[arg-type]
        port=port,
        admin_port=admin,
    )  # fmt: skip
    try:
        await k.wait_up()
        status = await k.status()
        assert [s.get("ready") for s in status] == [0], status
        assert not k.app_pids()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            unary = ch.unary_unary(f"/{grpc_app.SERVICE}/Unary")
            assert await unary(b"from zero", timeout=30) == b"echo:from zero"
            got = [m async for m in ch.unary_stream(f"/{grpc_app.SERVICE}/Stream")(b"3")]
            assert got == [b"0", b"1", b"2"]
        assert len(k.app_pids()) == 1  # one pod was started for the call
    finally:
        if k.proc.poll() is None:
            await k.interrupt(timeout=20)
        else:
            print(k.output())
