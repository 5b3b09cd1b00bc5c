# Redis for the compose cluster: Debian bookworm's redis-server (7.0), so the cluster needs no image
# registry (the base image can come from deploy/docker/base-image.sh). Build from the repository root:
#   docker build -f deploy/docker/redis.Dockerfile -t flateval/redis:7.0-bookworm .
# The Debian suite is the pin (its security updates replace exact versions).
ARG BASE_IMAGE=python:3.11.9-slim-bookworm
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 flateval \
    && useradd --system --uid 10001 --gid flateval --no-create-home --home-dir /data --shell /usr/sbin/nologin flateval \
    && mkdir /data && chown 10001:10001 /data
USER 10001:10001
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--dir", "/data"]
