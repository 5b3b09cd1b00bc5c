# A FlatlandRemoteClient submission shaped as the NeurIPS 2020 starter kits: flatland-rl installed with
# pip, the script as run.py, run as a user of its own with `python run.py`. No agent_bridge inside:
# `flateval run --agent-image IMG --agent "python -m agent_bridge.flatland_remote run.py"` brings it.
# Build context: tests/flatland_submissions. The base is an ARG (no registry is reachable in CI:
# deploy/docker/base-image.sh builds one from Debian's archive).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
RUN pip install --no-cache-dir flatland-rl==4.3.0
RUN useradd --create-home aicrowd
USER aicrowd
WORKDIR /home/aicrowd
COPY remote_client_tree.py run.py
CMD ["python", "run.py"]
