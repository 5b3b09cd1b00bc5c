# An example participant agent: agent_bridge (pyzmq + msgpack + numpy) and the random policy,
# a ZeroMQ REP server on $FLATEVAL_AGENT_BIND. A participant's own image only needs the same shape:
# bind $FLATEVAL_AGENT_BIND (default tcp://*:8086), run as a non-root user. Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t flateval/example-agent:0.1.0 .

# The base: today's python image, or the one deploy/docker/base-image.sh builds from Debian's archive
# where no registry can be reached (--build-arg BASE_IMAGE=..., compose: FLATEVAL_BASE_IMAGE).
ARG BASE_IMAGE=python:3.11.9-slim-bookworm
FROM ${BASE_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/agent \
    HOME=/tmp \
    FLATEVAL_AGENT_BIND=tcp://*:8086
RUN groupadd --system --gid 10001 agent \
    && useradd --system --uid 10001 --gid agent --no-create-home --home-dir /tmp --shell /usr/sbin/nologin agent
WORKDIR /agent
COPY deploy/docker/agent-requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY agent_bridge ./agent_bridge
USER 10001:10001
EXPOSE 8086
CMD ["python", "-m", "agent_bridge.examples.random_agent"]
