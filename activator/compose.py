"""The activator's parts as every process that runs one wires them: the ``activator`` binary
(:mod:`activator.main`) and ``knd run`` (:mod:`knd.runner`, which sends the stats to its own
autoscaler by function call). Neither the stats websocket (aiohttp) nor a platform is imported
here: ``knd run`` needs neither."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from dataplane.h2c import H2Hub
from dataplane.metrics import Labels, add_activator_metrics, knative_labels, wait_histogram
from dataplane.promtext import Registry
from dataplane.proxy import HTTPServer
from dataplane.statpb import WireStatMessage

from .env import ActivatorEnv
from .handler import Activator, server_config

if TYPE_CHECKING:
    from dataplane.tracing import Tracer

__all__ = ["SCOPE", "data_server", "new_activator"]

#: The OpenTelemetry scope of the activator's spans and metrics (Knative's package).
SCOPE = "knative.dev/serving/pkg/activator"


def new_activator(
    env: ActivatorEnv,
    loop: asyncio.AbstractEventLoop,
    *,
    send_stats: Callable[[list[WireStatMessage]], None],
    connected: Callable[[], bool],
    tracer: Tracer | None,
    registry: Registry,
    labels: Labels = knative_labels,
) -> Activator:
    """The request path, with its per-revision metrics and wait histogram in ``registry``."""
    waits = wait_histogram()
    act = Activator(
        loop=loop,
        pod_name=env.pod_name,
        send_stats=send_stats,
        connected=connected,
        cluster_domain=env.cluster_domain,
        queue_depth=env.queue_depth,
        queue_wait=env.queue_wait,
        probe_frequency=env.probe_frequency,
        probe_timeout=env.probe_timeout,
        mesh_mode=env.mesh_mode,
        max_idle_per_host=env.max_idle_proxy_conns_per_host,
        wait_histogram=waits,
        tracer=tracer,
    )
    add_activator_metrics(registry, act, labels)
    registry.add(waits)
    return act


def data_server(
    act: Activator, env: ActivatorEnv, loop: asyncio.AbstractEventLoop, h2c: H2Hub
) -> HTTPServer:
    """The data port: HTTP/1, and h2c with prior knowledge (gRPC) on the same listener."""
    server = HTTPServer(act, server_config(max_header_bytes=env.max_header_bytes), loop=loop)
    h2c.enable(server)
    return server
