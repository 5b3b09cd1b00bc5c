"""What `flateval verify` and `flateval render` show a person, and where `flateval run --record` leaves
its results (next to its recordings, so that `flateval verify DIR` checks the scores too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from env_worker.verify import RESULTS_FILE, Verdict
from flateval.progress import fmt
from flateval.results_file import results_json


def save_recorded_results(document: dict[str, Any], record_dir: str) -> str:
    """Write the results document into the submission's record folder; return the line to show."""
    folder = Path(record_dir) / str(document["submission_id"])
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{RESULTS_FILE}.tmp"
    tmp.write_text(results_json(document))
    tmp.rename(folder / RESULTS_FILE)
    return f"episodes recorded in {folder} (check them: flateval verify {folder})"


def print_verdicts(verdicts: Sequence[Verdict]) -> None:
    """The table of every episode checked (stdout)."""
    table = Table(title=f"flateval verify: {sum(v.status == 'verified' for v in verdicts)}/{len(verdicts)} verified")
    for column, justify in (("episode", "left"), ("steps", "right"), ("arrived", "right"),
                            ("trajectory reward", "right"), ("score", "right"), ("status", "left")):
        table.add_column(column, justify=justify, no_wrap=True)
    for v in verdicts:
        status = v.status if not v.superseded_by_complete else f"{v.status} (re-run verified)"
        table.add_row(v.episode, fmt(v.steps), fmt(v.arrivals, percent=True), fmt(v.trajectory_reward),
                      fmt(v.score), status)
    longest = max((len(v.episode) for v in verdicts), default=0)
    Console(width=max(Console().width, longest + 90)).print(table)  # never cut an episode's name


def failure_lines(verdicts: Sequence[Verdict]) -> list[str]:
    """One line per episode that failed the check."""
    return [f"{v.episode}: {v.status}: {v.detail}" for v in verdicts if v.failed]
