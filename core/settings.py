"""Typed configuration, in one place: the defaults a challenge starts from, the environment
variables flateval reads, and how `flateval run` is set up.

Everything a challenge can change (deadlines, seed, offset, observation builders) is a field of a
challenge (`core.challenge`) or of an episode (`core.episode_spec`), never a constant in code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_PLANNING_TIMEOUT_S = 300.0
DEFAULT_STEP_TIMEOUT_S = 5.0
DEFAULT_OVERALL_TIMEOUT_S = 8 * 3600.0
NO_DEADLINE_S = 24 * 3600.0
"""How long a request waits when the challenge sets no planning or step deadline (FAB's behaviour): the
episode's wall limit (``time_limits.episode_s``), which such a phase must have, ends it first."""
DEFAULT_ENV_SEED = 1001  # flatland-rl's evaluator resets every env with this seed
DEFAULT_GYMNASIUM_SEED = 0  # a gymnasium run resets episode i with seed + i
DEFAULT_OBSERVATION_BUILDERS = ("none", "tree", "global")
"""The observation builders an env worker can build for an agent (and a challenge may allow)."""
FAB_AGGREGATION = "fab"
"""flatland-benchmarks' (FAB's) scores: per test and over the tests, the NaN-skipping sum of the
episodes' normalized rewards (primary) and the NaN-skipping mean of their percentage complete."""
AGGREGATIONS = ("mean", "sum", "mean_of_test_means", FAB_AGGREGATION)
"""How a submission's episode scores combine into its primary score (`scoring.aggregate`)."""

AGENT_ENDPOINT_ENV = "FLATEVAL_AGENT_ENDPOINT"
AGENT_CURVE_KEY_ENV = "FLATEVAL_AGENT_CURVE_KEY"  # the agent's CURVE public key (Z85): encrypt the link
REDIS_URL_ENV = "FLATEVAL_REDIS_URL"
TEST_SET_DIR_ENV = "FLATEVAL_TEST_SET_DIR"
"""Where a worker sees the test set, when it is mounted elsewhere than on the submitting host."""
RECORD_DIR_ENV = "FLATEVAL_RECORD_DIR"  # a worker's record dir (docs/audit.md)
METRICS_HOST_ENV = "FLATEVAL_METRICS_HOST"
DEFAULT_METRICS_HOST = "127.0.0.1"  # /metrics on loopback unless asked: a container says 0.0.0.0 (deploy/)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's: where forked processes write their metrics
LINK_SPIN_ENV = "FLATEVAL_LINK_SPIN_US"  # how long a worker busy-waits for its agent's reply (env_worker.agent_link)

FLATLAND = "flatland"
GYMNASIUM = "gymnasium"
ENVIRONMENTS = (FLATLAND, GYMNASIUM)


@dataclass(frozen=True)
class RunSettings:
    """How `flateval run` evaluates a submission locally. Time limits left None come from the
    challenge phase (default: the bundled neurips2020 challenge, phase round1)."""

    agent_command: str | None  # with agent_image: the container's arguments (None: the image's own command)
    test_set: str | None = None
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    redis_url: str | None = None
    output: str | None = None
    seed: int | None = None  # None: the challenge's (flatland: 1001, gymnasium: 0)
    env: str | None = None  # "gymnasium:ENV_ID": evaluate on generated episodes instead of a test set
    episodes: int | None = None  # with a gymnasium env: how many (default: the challenge phase's)
    challenge: str | None = None
    phase: str | None = None
    planning_timeout_s: float | None = None
    step_timeout_s: float | None = None
    overall_timeout_s: float | None = None
    agent_startup_timeout_s: float = 60.0
    metrics_port: int | None = None
    metrics_host: str = DEFAULT_METRICS_HOST
    curve: bool = False
    agent_cpus: float | None = None  # None: the challenge's agent resources
    agent_memory: str | None = None
    agent_disk: str | None = None
    agent_pids: int | None = None
    sandbox: bool = True  # False: --no-sandbox (debugging)
    agent_image: str | None = None  # run each agent as a container of this image (env_worker.container)

    @property
    def agent(self) -> str:
        """The agent, as a submission records it."""
        if self.agent_image:
            return f"image {self.agent_image}" + (f" with {self.agent_command}" if self.agent_command else "")
        return self.agent_command or ""
