"""Why a run went wrong, said under its score table: the first episodes that were not completed,
with their errors, and where the agents' output is kept. Read from the results document alone, so
it says the same for a local run and for a remote submission's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.outcomes import COMPLETED

SHOWN = 5
"""How many episodes that were not completed are listed (every error is in the results file)."""


def not_completed_lines(document: dict[str, Any], limit: int = SHOWN) -> list[str]:
    """One line per episode that was not completed (the first `limit`), with its outcome and error."""
    episodes = document.get("episodes") or []
    lost = [e for e in episodes if e.get("outcome") != COMPLETED]
    if not lost:
        return []
    lines = [f"not completed: {len(lost)} of {len(episodes)} episodes"]
    for episode in lost[:limit]:
        error = " ".join(str(episode.get("error") or "").split())  # one line, whatever the agent sent
        lines.append(f"  {episode.get('env_file')}  {episode.get('outcome')}  {error}".rstrip())
    if len(lost) > limit:
        lines.append(f"  ... and {len(lost) - limit} more: every episode's error is in the results")
    return lines


def agent_logs_line(document: dict[str, Any], results_path: Path) -> str | None:
    """Where the agents' output is: the results file's ``agent_logs``, which `flateval report` shows."""
    logs = document.get("agent_logs") or {}
    if not logs:
        return None
    return f"agent logs ({len(logs)}): \"agent_logs\" in {results_path}, shown by `flateval report {results_path}`"


def diagnosis(document: dict[str, Any], results_path: Path) -> list[str]:
    lines = not_completed_lines(document)
    logs = agent_logs_line(document, results_path)
    return lines + ([logs] if logs else [])
