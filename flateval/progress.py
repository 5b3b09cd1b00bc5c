"""What `flateval run` shows a person: a progress bar while it runs, a score table at the end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from broker.status import CANCELLED, FAILED, TERMINAL
from core.outcomes import AGENT_ERROR, ENV_ERROR, TIMEOUT
from core.settings import FAB_AGGREGATION
from scoring.aggregate import primary_score
from scoring.export import episodes_played

if TYPE_CHECKING:
    from broker.store import Submission

console = Console(stderr=True)


class ProgressView:
    """Episodes done/total, the running score (as the final score will be computed), and the
    timeouts so far."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("[bold]evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[summary]}"), console=console, transient=False)
        self._task = None

    def __enter__(self) -> "ProgressView":
        return self  # the bar appears with the first progress: an early error prints only its line

    def __exit__(self, *exc: Any) -> None:
        if self._task is not None:
            self._progress.__exit__(*exc)

    def update(self, results: list[dict], record: Submission) -> None:
        total = record.n_episodes
        summary = progress_summary(results, record)
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task("episodes", total=total, summary=summary)
        self._progress.update(self._task, completed=len(results), total=total, summary=summary)


def progress_summary(results: list[dict], record: Submission) -> str:
    """The running score (computed as the final score will be), the timeouts and errors so far."""
    score = primary_score(results, record.aggregation)
    summary = f"mean NR {score:+.4f}" if score is not None else "mean NR -"
    return summary + "  " + _faults(results)


def _faults(results: list[dict]) -> str:
    timeouts = sum(r.get("outcome") == TIMEOUT for r in results)
    errors = sum(r.get("outcome") in (AGENT_ERROR, ENV_ERROR) for r in results)
    return f"timeouts {timeouts}  errors {errors}"


def status_line(record: Submission, results: list[dict], now: float) -> str:
    """`flateval status`: what the progress bar of `flateval run` shows (episodes, running score,
    timeouts, errors, elapsed time), the deadline left, and why it stopped or failed."""
    episodes = f"{len(results)}/{record.n_episodes} episodes"
    if record.planned_episodes and record.planned_episodes != record.n_episodes:
        episodes += f" (of {record.planned_episodes} planned)"
    failed = record.status in (FAILED, CANCELLED)  # no score, whatever the results so far would give
    parts = [record.id, record.status, episodes,
             f"no score  {_faults(results)}" if failed else progress_summary(results, record)]
    started = record.enqueued_at or record.submitted_at
    if started:
        parts.append(f"elapsed {duration(((record.ended_at or now) - started))}")
    if record.deadline_at and record.status not in TERMINAL:
        left = record.deadline_at - now
        parts.append(f"deadline in {duration(left)}" if left > 0 else "deadline passed")
    if record.stopped_by:
        parts.append(f"stopped by: {record.stopped_by}")
    if record.error:
        parts.append(f"({record.error})")
    return "  ".join(parts)


def duration(seconds: float) -> str:
    """A human duration: 7.2s, 4m05s, 7h58m."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt(value: Any, percent: bool = False) -> str:
    """A table cell: floats to 6 places (or as a percentage), "-" for none."""
    if value is None:
        return "-"
    return f"{value:.0%}" if percent else f"{value:.6f}" if isinstance(value, float) else str(value)


def print_score(document: dict) -> None:
    score = document["score"]
    table = Table(title=f"submission {document['submission_id']}: {document['status']}")
    table.add_column("metric")
    table.add_column("value", justify="right")

    fab = score.get("aggregation") == FAB_AGGREGATION  # FAB's names: the sum, and the mean of the tests' means
    table.add_row("normalized_reward (FAB: sum)" if fab else "mean normalized return",
                  fmt(score.get("mean_normalized_return")))
    if (document.get("settings") or {}).get("env", "flatland") == "flatland":
        table.add_row("percentage_complete (FAB: mean of tests)" if fab else "mean percentage complete",
                      fmt(score.get("mean_percentage_complete")))
    else:  # gymnasium: no completion; the mean raw return (the primary may be normalized)
        table.add_row("mean return", fmt(score.get("mean_return")))
    table.add_row("episodes", episodes_played(document))
    for outcome, count in (score.get("outcomes") or {}).items():
        table.add_row(f"  {outcome}", str(count))
    wall = document["timing"].get("wall_s")
    table.add_row("wall time (s)", fmt(wall))
    if document.get("stopped_by"):  # a rule ended it early, and it still has its score: not an error
        table.add_row("stopped by", document["stopped_by"])
    if document.get("error"):
        table.add_row("error", document["error"])
    Console().print(table)
