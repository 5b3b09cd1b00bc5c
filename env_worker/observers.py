"""Observers hang cross-cutting concerns (metrics, logs, recording) on the episode loop.

Subclass `EpisodeObserver` and override what you need; every hook defaults to doing nothing, so the
loop pays only for the observers that are attached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flateval.settings import EpisodeSpec
    from scoring.episode import EpisodeResult


class EpisodeObserver:
    def episode_started(self, spec: "EpisodeSpec") -> None:
        """Called before the env is loaded."""

    def agent_replied(self, seconds: float, phase: str) -> None:
        """The agent answered after `seconds`; `phase` is ``planning`` or ``step``."""

    def env_stepped(self, seconds: float) -> None:
        """One env step (with its observations) took `seconds`."""

    def episode_ended(self, result: "EpisodeResult") -> None:
        """The episode has its final record."""
