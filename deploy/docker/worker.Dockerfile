# The env worker: `flateval worker`, an RQ worker paired with one agent (it also runs `flateval submit`,
# `status`, `results`, `cancel`). Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t flateval/worker:0.1.0 .
# Base images are pinned by tag; for byte-for-byte reproducible builds pin the digest too
# (python:3.11.9-slim-bookworm@sha256:...).

# The base: today's python image, or the one deploy/docker/base-image.sh builds from Debian's archive
# where no registry can be reached (--build-arg BASE_IMAGE=..., compose: FLATEVAL_BASE_IMAGE).
ARG BASE_IMAGE=python:3.11.9-slim-bookworm
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY deploy/docker/worker-requirements.txt ./requirements.txt
# Dependencies first (their layer survives code changes), flateval itself without dependencies.
RUN python -m venv /opt/flateval \
    && /opt/flateval/bin/pip install --no-cache-dir -r requirements.txt
COPY pyproject.toml setup.cfg README.md ./
COPY flateval ./flateval
COPY broker ./broker
COPY env_worker ./env_worker
COPY agent_bridge ./agent_bridge
COPY scoring ./scoring
COPY core ./core
COPY report ./report
# The bytecode pip compiles stays in the image: the root is read-only, so without it every worker
# would compile flatland, pandas & co. in memory again before its first episode (~7 s on 2 cores).
RUN /opt/flateval/bin/pip install --no-cache-dir --no-deps .

FROM ${BASE_IMAGE}
# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 flateval \
    && useradd --system --uid 10001 --gid flateval --no-create-home --home-dir /tmp --shell /usr/sbin/nologin flateval
COPY --from=build /opt/flateval /opt/flateval
# Everything the worker writes (prometheus multiprocess files, matplotlib's cache) goes under /tmp,
# so the root filesystem can be read-only (Kubernetes mounts an emptyDir there).
ENV PATH=/opt/flateval/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    FLATEVAL_METRICS_PORT=9109 \
    FLATEVAL_METRICS_HOST=0.0.0.0
USER 10001:10001
WORKDIR /tmp
EXPOSE 9109
# SIGTERM is RQ's warm shutdown: the running episode finishes first (give it the grace period).
STOPSIGNAL SIGTERM
CMD ["flateval", "worker"]
