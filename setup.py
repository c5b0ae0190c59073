"""Optional mypyc compilation of the hot path (the data path of queue-proxy and activator).

``pip install .`` builds a pure-Python package. With ``KND_MYPYC=1`` (and mypy installed in the
build environment, e.g. ``pip install mypy && KND_MYPYC=1 pip install --no-build-isolation .``)
the modules below are compiled to C extensions with mypyc: same code, same behaviour, about 1.4x
the throughput per core (benchmarks/RESULTS.md). The Docker image ships the compiled build.
"""

import os

from setuptools import setup

# The per-request code: engine, upstream pool, breaker, stats, timeouts, header tables, and
# the queue-proxy's and the activator's request handling. Everything else stays interpreted
# (start-up and config code). Each group is one shared library: a process maps only the groups
# it imports (the queue-proxy never loads the activator's, and neither loads HTTP/2's until a
# client speaks it), which keeps the compiled build's idle memory near the interpreted one's.
COMPILED_GROUPS = {
    "knd_engine": [
        "dataplane/proxy.py",
        "dataplane/upstream.py",
        "dataplane/http1.py",
        "dataplane/breaker.py",
        "dataplane/stats.py",
        "dataplane/timeouts.py",
        "dataplane/forwarded.py",
        "dataplane/h1core.py",
        "dataplane/h1reader.py",
        "dataplane/handle.py",
        "queueproxy/handler.py",
        "queueproxy/drain.py",
    ],
    "knd_h2": [
        "dataplane/h2stream.py",
        "dataplane/hpack.py",
        "dataplane/h2frames.py",
        "dataplane/h2engine.py",
    ],
    "knd_activator": [
        "activator/throttler.py",
        "activator/lb_policy.py",
        "activator/reporter.py",
        "activator/handler.py",
        "activator/revisions.py",
    ],
}
COMPILED = [path for group in COMPILED_GROUPS.values() for path in group]

# Hand-written C beside them: the lexical scan of an HTTP/1.1 head (dataplane/h1scan.py is its
# Python reference; the compiled readers' quick path calls it).
C_EXTENSIONS = {"dataplane._h1scan": ["dataplane/_h1scan.c"]}

ext_modules = []
if os.environ.get("KND_MYPYC") == "1":
    from mypyc.build import mypycify
    from setuptools import Extension

    ext_modules = mypycify(
        COMPILED,
        separate=[(paths, name) for name, paths in COMPILED_GROUPS.items()],
        opt_level="3",
        debug_level="0",
    ) + [
        Extension(name, sources, extra_compile_args=["-O2"])
        for name, sources in C_EXTENSIONS.items()
    ]

setup(ext_modules=ext_modules)
