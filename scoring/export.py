"""Results in the shapes others take as they are: flatland's results CSV, EvalAI's result list, and
flatland-benchmarks' (FAB's) per-test results bodies."""

from __future__ import annotations

import csv
import io
from typing import Any

from scoring.aggregate import scored_episodes, test_key

CSV_COLUMNS = [
    # flatland-rl's evaluator columns first (FlatlandRemoteEvaluationService's results CSV) ...
    "test_id", "env_id", "reward", "normalized_reward", "percentage_complete", "steps", "simulation_time",
    # ... then what flateval knows besides
    "env_file", "outcome", "n_agents", "max_episode_steps", "seed", "agent_response_mean_s",
    "agent_response_max_s", "planning_s", "worker", "error",
    "stopped_by",  # the submission's: a rule that ended it early with its score (the completion gate); else empty
    "scenario_id",  # FAB's scenario id (its test id is test_id)
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
        test_id, env_id = _flatland_ids(episode)
        writer.writerow({
            "test_id": test_id, "env_id": env_id, "scenario_id": episode.get("scenario_id"),
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


def _flatland_ids(episode: dict[str, Any]) -> tuple[str, str]:
    """flatland's (test_id, env_id) of an episode: its env file's folder and name (Test_1, Level_0;
    level_0, level_0_scenario_1), else Test_<N>/Level_<M> from its numbers."""
    folder, _, name = str(episode.get("env_file") or "").removesuffix(".pkl").rpartition("/")
    if folder and name and "/" not in folder and episode.get("test") is not None:
        return folder, name
    return _named("Test", episode.get("test")), _named("Level", episode.get("level"))


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


def fab_results(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Test id -> the body FAB's ``POST /results/submissions/{sid}/tests/{test_id}`` takes, as FAB's
    orchestrator posts it: ``{"data": [{"scenario_id": ..., "scores": {"normalized_reward": f,
    "percentage_complete": f}}]}``, one entry per scored scenario in test order (a missing score is
    null, FAB's NaN). Episodes lost to a broken env file or stopped are not posted (FAB posts only the
    scenarios it evaluated)."""
    bodies: dict[str, dict[str, Any]] = {}
    for episode in scored_episodes(_episodes(document)):
        test = test_key(episode)
        if test is None:
            raise ExportError(f"episode {episode.get('env_file')} belongs to no test (FAB scores tests)")
        scenario = episode.get("scenario_id") or episode.get("ep_id") or episode.get("env_file")
        bodies.setdefault(str(test), {"data": []})["data"].append({"scenario_id": scenario, "scores": {
            "normalized_reward": episode.get("normalized_return"),
            "percentage_complete": episode.get("percentage_complete")}})
    return bodies
