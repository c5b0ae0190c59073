"""benchmarks/_go_activator.ActivatorNamespace, which ``proxy --go-activator`` runs both
activators in: the stand-in autoscaler answers inside the namespace under the autoscaler's
cluster DNS name, a command started there is reachable at the namespace's address, and closing
stops both and removes the namespace and its hosts file. No Go binary needed."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from benchmarks import _go_activator as goa
from benchmarks._procs import ProcessSet

from .netns import netns_or_skip


def test_namespace_runs_the_autoscaler_stand_in_and_a_command(tmp_path: Path) -> None:
    netns_or_skip().close()  # skips where namespaces cannot be made (not root, no iproute2)
    with ProcessSet() as procs:
        space = goa.ActivatorNamespace(procs, tmp_path)
        try:
            space.create()
            assert space.ns is not None
            name = space.ns.name
            hosts = Path("/etc/netns") / name / "hosts"
            assert goa.AUTOSCALER_HOST in hosts.read_text()
            # The autoscaler's cluster name resolves inside the namespace (ip netns exec
            # mounts the hosts file) and the stand-in answers there.
            fetch = (
                "import urllib.request;"
                f"print(urllib.request.urlopen('http://{goa.AUTOSCALER_HOST}:"
                f"{goa.AUTOSCALER_PORT}/', timeout=5).read().decode())"
            )
            out = subprocess.run(
                space.ns.command([sys.executable, "-c", fetch]),
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.stdout.strip() == "ok", out.stderr
            # A server started in the namespace answers at its address, from this side.
            server = [sys.executable, "-m", "http.server", "--bind", space.ip, "8012"]
            proc = space.start(
                ["env"], server, {"PATH": "/usr/bin:/bin"}, 8012, tmp_path / "server.log"
            )
            with urllib.request.urlopen(f"http://{space.ip}:8012/", timeout=5) as r:
                assert r.status == 200
            sink = space.sink
            assert sink is not None
        finally:
            space.close()
        assert proc.poll() is not None and sink.poll() is not None
        assert not hosts.exists()
        assert (
            name
            not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        )
