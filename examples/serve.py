"""Run the sample app behind a real queue-proxy, as one Knative pod would be (``make run``).

The app listens on 127.0.0.1:8080 and the queue-proxy on :8012 with Knative's env contract;
try ``curl localhost:8012/`` and ``curl -s localhost:9090/metrics | xxd``. Ctrl-C stops both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def main() -> int:
    port = os.environ.get("PORT", "8012")
    cc = os.environ.get("CONTAINER_CONCURRENCY", "10")
    app_env = dict(os.environ, PORT="8080")
    qp_env = dict(
        os.environ,
        CONTAINER_CONCURRENCY=cc,
        QUEUE_SERVING_PORT=port,
        QUEUE_SERVING_TLS_PORT="8112",
        USER_PORT="8080",
        REVISION_TIMEOUT_SECONDS="300",
        SERVING_LOGGING_CONFIG="",
        SERVING_LOGGING_LEVEL="info",
        SERVING_NAMESPACE="default",
        SERVING_CONFIGURATION="hello",
        SERVING_REVISION="hello-00001",
        SERVING_POD="hello-00001-deployment-local",
        SERVING_POD_IP="127.0.0.1",
        SERVING_READINESS_PROBE='{"tcpSocket":{"port":8080,"host":"127.0.0.1"},"successThreshold":1}',
    )
    bindir = os.path.dirname(sys.executable)
    app = subprocess.Popen([sys.executable, "-m", "examples.hello"], env=app_env)
    qp = subprocess.Popen([os.path.join(bindir, "queue-proxy")], env=qp_env)
    print(
        f"hello app on 127.0.0.1:8080, queue-proxy (containerConcurrency={cc}) on :{port}\n"
        f"  curl localhost:{port}/            curl localhost:{port}/sleep?ms=100\n"
        f"  curl -H 'User-Agent: kube-probe/1.30' -H 'K-Network-Probe: queue' localhost:{port}/\n"
        "Ctrl-C to stop.",
        flush=True,
    )
    try:
        while app.poll() is None and qp.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for p in (qp, app):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in (qp, app):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
