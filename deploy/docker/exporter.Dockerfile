# The exporter: `flateval exporter`, Redis-derived metrics (queues, workers, submissions) on :9108.
# Small on purpose: no Flatland, no numpy, only click + redis + rq + prometheus-client. Build from the
# repository root:
#   docker build -f deploy/docker/exporter.Dockerfile -t flateval/exporter:0.1.0 .

# The base: today's python image, or the one deploy/docker/base-image.sh builds from Debian's archive
# where no registry can be reached (--build-arg BASE_IMAGE=..., compose: FLATEVAL_BASE_IMAGE).
ARG BASE_IMAGE=python:3.11.9-slim-bookworm
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY deploy/docker/exporter-requirements.txt ./requirements.txt
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
# --no-deps: the exporter imports none of flatland-rl, numpy, pyzmq (checked by a smoke run, docs/deploy.md).
RUN /opt/flateval/bin/pip install --no-cache-dir --no-deps . \
    && rm -rf /opt/flateval/lib/python3.11/site-packages/flateval/data \
    && find /opt/flateval -name '__pycache__' -type d -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 flateval \
    && useradd --system --uid 10001 --gid flateval --no-create-home --home-dir /tmp --shell /usr/sbin/nologin flateval
COPY --from=build /opt/flateval /opt/flateval
ENV PATH=/opt/flateval/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    FLATEVAL_METRICS_HOST=0.0.0.0
USER 10001:10001
WORKDIR /tmp
EXPOSE 9108
CMD ["flateval", "exporter", "--port", "9108"]
