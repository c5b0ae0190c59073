# syntax=docker/dockerfile:1
#
# One slim image with every entry point: queue-proxy (the default entry point, because Knative
# starts the `queue-sidecar-image` without a command), activator, knd-autoscaler and knd.
#
#   docker build -t ghcr.io/knative-dataplane/knd:0.1.0 .     # mypyc-compiled hot path (shipped)
#   docker build --build-arg BUILD=pure -t ghcr.io/knative-dataplane/knd:0.1.0 .  # interpreted
#
# That is the name every manifest in deploy/ uses (README, "Kubernetes": pushing it elsewhere).
#
# The image writes nothing outside /tmp: bytecode is compiled at build time and Python is told
# not to write any, HOME is /tmp, so it runs with readOnlyRootFilesystem (mount an emptyDir on
# /tmp; see deploy/).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BUILD=compiled

# -- wheels: the project as a wheel, interpreted or compiled -------------------------------------
FROM ${PYTHON_IMAGE} AS source
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY pyproject.toml setup.py README.md ./
COPY dataplane/ dataplane/
COPY queueproxy/ queueproxy/
COPY activator/ activator/
COPY autoscaler/ autoscaler/
COPY platforms/ platforms/
COPY knd/ knd/

FROM source AS wheel-pure
RUN pip wheel --no-deps --wheel-dir /wheels .

# Optional mypyc stage (setup.py KND_MYPYC=1): the per-request modules become C extensions.
FROM source AS wheel-compiled
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# mypyc type-checks what it compiles, so the runtime dependencies must be importable here.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install "setuptools>=68" wheel "mypy>=1.10" types-pyyaml -r /tmp/requirements.txt \
    && KND_MYPYC=1 pip wheel --no-build-isolation --no-deps --wheel-dir /wheels .

FROM wheel-${BUILD} AS wheel

# -- install: a virtual environment with the project and its dependencies -----------------------
FROM ${PYTHON_IMAGE} AS install
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY --from=wheel /wheels /wheels
RUN python -m venv /opt/knd \
    && /opt/knd/bin/pip install --upgrade pip \
    && /opt/knd/bin/pip install "$(ls /wheels/*.whl)[kubernetes,tracing]" \
    && /opt/knd/bin/pip uninstall -y pip \
    && rm -rf /wheels
# Every console script of pyproject.toml must be installed (tests/unit/test_dockerfile.py keeps
# this list equal to [project.scripts]).
RUN for cmd in queue-proxy activator knd-autoscaler knd; do \
        test -x "/opt/knd/bin/$cmd" || { echo "missing entry point: $cmd" >&2; exit 1; }; \
    done
# Bytecode now, checked by hash of nothing (unchecked-hash): never rewritten at run time.
RUN /opt/knd/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        /opt/knd/lib

# -- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="knative-dataplane" \
      org.opencontainers.image.description="queue-proxy, activator and KPA autoscaler (Knative-compatible)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=install /opt/knd /opt/knd
ENV PATH=/opt/knd/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_MMAP_THRESHOLD_=1048576 \
    MALLOC_TRIM_THRESHOLD_=2097152
WORKDIR /tmp
# Non-root, numeric (runAsNonRoot can verify a numeric user without /etc/passwd).
USER 65532:65532
# Ports: queue-proxy 8012 (serving), 8022 (admin), 9090 (metrics); activator 8012/9090;
# knd-autoscaler 8080 (stats websocket), 9090 (metrics, health).
EXPOSE 8012 8022 8080 9090
ENTRYPOINT ["/opt/knd/bin/queue-proxy"]
