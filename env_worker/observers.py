"""Observers hang cross-cutting concerns (metrics, logs, recording) on the episode loop.

Subclass `EpisodeObserver` and override what you need; every hook defaults to doing nothing, so the
loop pays only for the observers that are attached. Hooks on the per-step path (`agent_replied`,
`env_stepped`) must only append to memory: no Redis, no file I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.episode_spec import EpisodeSpec
    from env_worker.env_adapter import EnvAdapter, StepOutcome
    from scoring.episode import EpisodeResult


class EpisodeObserver:
    def episode_started(self, spec: "EpisodeSpec") -> None:
        """Called before the env is loaded."""

    def env_reset(self, env: "EnvAdapter") -> None:
        """The env was reset as the challenge prescribes; the agent has not seen it yet."""

    def agent_replied(self, seconds: float, phase: str) -> None:
        """The agent answered after `seconds`; `phase` is ``planning`` or ``step``."""

    def env_stepped(self, seconds: float, actions: Any, outcome: "StepOutcome") -> None:
        """The env took one step with the agent's (validated) `actions`; with its observations it took
        `seconds`."""

    def episode_ended(self, result: "EpisodeResult") -> None:
        """The episode has its final record."""
