# Prometheus for the compose cluster: Debian bookworm's prometheus (2.42), so the cluster needs no image
# registry (the base image can come from deploy/docker/base-image.sh). Build from the repository root:
#   docker build -f deploy/docker/prometheus.Dockerfile -t flateval/prometheus:2.42-bookworm .
# The configuration is mounted at /etc/prometheus/prometheus.yml (deploy/prometheus/prometheus.yml).
ARG BASE_IMAGE=python:3.11.9-slim-bookworm
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 flateval \
    && useradd --system --uid 10001 --gid flateval --no-create-home --home-dir /prometheus --shell /usr/sbin/nologin flateval \
    && mkdir /prometheus && chown 10001:10001 /prometheus
USER 10001:10001
WORKDIR /prometheus
EXPOSE 9090
CMD ["prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=:9090"]
