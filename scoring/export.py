"""Results in the shapes others take as they are: flatland's results CSV and EvalAI's result list."""

from __future__ import annotations

import csv
import io
from typing import Any

CSV_COLUMNS = [
    # flatland-rl's evaluator columns first (FlatlandRemoteEvaluationService's results CSV) ...
    "test_id", "env_id", "reward", "normalized_reward", "percentage_complete", "steps", "simulation_time",
    # ... then what flateval knows besides
    "env_file", "outcome", "n_agents", "max_episode_steps", "seed", "agent_response_mean_s",
    "agent_response_max_s", "planning_s", "worker", "error",
    "stopped_by",  # the submission's: a rule that ended it early with its score (the completion gate); else empty
]


class ExportError(ValueError):
    """The results document cannot be exported; one line for the user."""


def _episodes(document: dict[str, Any]) -> list[dict[str, Any]]:
    episodes = document.get("episodes")
    if not isinstance(episodes, list):
        raise ExportError("not a flateval results document (no 'episodes' list)")
    return episodes


def to_csv(document: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    stopped_by = document.get("stopped_by")
    for episode in _episodes(document):
        response = episode.get("agent_response") or {}
        writer.writerow({
            "test_id": _named("Test", episode.get("test")), "env_id": _named("Level", episode.get("level")),
            "reward": episode.get("cumulative_reward"), "normalized_reward": episode.get("normalized_return"),
            "percentage_complete": episode.get("percentage_complete"), "steps": episode.get("steps"),
            "simulation_time": episode.get("duration_s"), "env_file": episode.get("env_file"),
            "outcome": episode.get("outcome"), "n_agents": episode.get("n_agents"),
            "max_episode_steps": episode.get("max_episode_steps"), "seed": episode.get("seed"),
            "agent_response_mean_s": response.get("mean_s"), "agent_response_max_s": response.get("max_s"),
            "planning_s": response.get("planning_s"), "worker": episode.get("worker"),
            "error": episode.get("error"), "stopped_by": stopped_by,
        })
    return out.getvalue()


def _named(prefix: str, number: Any) -> str:
    """flatland's Test_<N>/Level_<M> names; empty for an episode of no test set (gymnasium)."""
    return "" if number is None else f"{prefix}_{number}"


def episodes_played(document: dict[str, Any]) -> str:
    """"3 of 8": the episodes scored, of those planned (a completion gate may have stopped early)."""
    planned = document.get("planned_episodes") or document.get("n_episodes")
    return f"{len(_episodes(document))} of {planned}"


def no_score(document: dict[str, Any]) -> str | None:
    """Why a results document has no score (a failed or cancelled submission: its error, else its
    status), or None when it has one."""
    score = document.get("score") or {}
    if document.get("status") == "finished" and score.get("mean_normalized_return") is not None:
        return None
    return document.get("error") or f"status {document.get('status')}"


def to_evalai(document: dict[str, Any], split: str | None = None) -> list[dict[str, Any]]:
    """The list EvalAI's submission-update endpoint takes as ``result`` (see docs/evalai.md)."""
    _episodes(document)
    score = document.get("score") or {}
    primary, secondary = score.get("mean_normalized_return"), score.get("mean_percentage_complete")
    reason = no_score(document)
    if reason is not None:
        raise ExportError(f"submission has no score to export ({reason})")
    split = split or (document.get("settings") or {}).get("phase") or "test"
    accuracies = {"mean_normalized_return": float(primary)}
    if secondary is not None:  # a gymnasium env has no completion
        accuracies["percentage_complete"] = float(secondary)
    entry = {"split": split, "show_to_participant": True, "accuracies": accuracies}
    if document.get("stopped_by"):  # EvalAI reads split, accuracies and show_to_participant only: this is the host's
        entry.update(stopped_by=document["stopped_by"], episodes=episodes_played(document))
    return [entry]
