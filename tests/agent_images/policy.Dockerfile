# A flatland Policy submission shaped as flatland-benchmarks' f3 starter kit: flatland-rl installed
# (`flatland-trajectory-generate-from-policy` on the path), the policy and its observation builder
# named by POLICY and OBS_BUILDER, an entrypoint that sets PYTHONPATH=$PWD and runs its arguments, a
# user of its own. No agent_bridge inside: `flateval run --agent-image IMG --agent "python -m
# agent_bridge.flatland_policy"` brings it. Build context: tests/flatland_submissions.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
RUN pip install --no-cache-dir flatland-rl==4.3.0
RUN useradd --create-home conda
USER conda
WORKDIR /home/conda
COPY tree_policy.py my_orga/tree_policy.py
COPY entrypoint.sh ./
ENV POLICY=my_orga.tree_policy.ClosestBranchPolicy
ENV OBS_BUILDER=my_orga.tree_policy.TreeObs
ENTRYPOINT ["sh", "entrypoint.sh"]
CMD ["flatland-trajectory-generate-from-policy", "--help"]
