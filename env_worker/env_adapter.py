"""The small interface between the episode loop and an environment.

The loop in `env_worker.episode` speaks only this interface; everything Flatland-specific lives in
`env_worker.flatland_env`, everything Gymnasium-specific in `env_worker.gymnasium_env`;
`env_worker.env_factory` picks one from the episode's spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from scoring.episode import ScoreInputs


class EnvLoadError(Exception):
    """The env file could not be loaded or reset: the host's problem, scored as ``env_error``."""


class ObservationNotAllowed(Exception):
    """The agent asked for an observation builder the episode does not allow."""


@dataclass
class StepOutcome:
    """One env step, already in wire form for the agent."""

    observations: Any
    rewards: list
    dones: list
    info: dict | None  # None for a replica agent (it has its own)
    done: bool


class EnvAdapter(Protocol):
    """One loaded environment, driven by the episode loop."""

    def use_observation(self, spec: Mapping[str, Any] | None) -> dict | None:
        """Install the observation builder the agent asked for; return the spec in force (None: the
        env has no builders to choose from)."""

    def serve_replica(self) -> dict:
        """Build no observations and no info: the agent steps its own copy of the env. Return the
        observation spec in force (`env_worker.replica.REPLICA_OBSERVATION`)."""

    def reset(self) -> tuple[Any, dict]:
        """Reset as the challenge prescribes; return (observations, info) in wire form."""

    def facts(self) -> dict:
        """Static facts the agent gets in ``episode_start`` (sizes, map, agents' targets)."""

    def parse_actions(self, reply: Mapping[str, Any]) -> Any:
        """Validate an ``act`` reply; raise `agent_bridge.protocol.ProtocolError` if invalid."""

    def step(self, actions: Any) -> StepOutcome:
        """Advance one step."""

    def score_inputs(self) -> ScoreInputs:
        """Totals so far (valid at any point, so a cut episode can report its progress)."""

    def release(self) -> None:
        """The episode is over: free what the env holds."""
