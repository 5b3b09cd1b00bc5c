"""A results document read once into what a report shows: the submission's facts, its episodes with
names and anchors, and their places in the test-by-level grid.

Results documents come from several flateval versions and from files people edit, so every field
is optional here: a missing value is shown as missing, never a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from core.outcomes import AGENT_ERROR, ENV_ERROR, TIMEOUT


class ReportError(ValueError):
    """The input cannot be reported on; the message is one line for the user."""


@dataclass(frozen=True)
class Episode:
    """One episode record, with the names a person reads it by."""

    record: Mapping[str, Any]
    anchor: str  # the id of its detail in the page
    label: str  # "Test 0 · Level 1", or "seed 7" for an episode of no test set
    short: str  # "T0 L1" / "seed 7": plot tick labels

    def get(self, key: str, default: Any = None) -> Any:
        value = self.record.get(key)
        return default if value is None else value

    @property
    def outcome(self) -> str | None:
        return self.record.get("outcome")

    @property
    def normalized_return(self) -> float | None:
        return number(self.record.get("normalized_return"))

    @property
    def response(self) -> Mapping[str, Any]:
        """The agent's response times: count, mean_s, max_s, planning_s, p50_s, p95_s (any may be absent)."""
        return section(self.record, "agent_response")

    @property
    def missed_a_step(self) -> bool:
        """A timeout after the first actions: the step deadline was missed, not the planning one."""
        return self.outcome == TIMEOUT and self.get("steps", 0) > 0

    @property
    def trains_home(self) -> int | None:
        """Trains that reached their target: the completed fraction times the trains."""
        fraction, n_agents = number(self.record.get("percentage_complete")), self.record.get("n_agents")
        if fraction is None or not isinstance(n_agents, int):
            return None
        return round(fraction * n_agents)


@dataclass(frozen=True)
class Grid:
    """Episodes laid out by test (rows) and level (columns); one row for episodes of no test set."""

    rows: list[str]
    columns: list[str]
    cells: list[list[Episode | None]]


@dataclass
class Submission:
    """One results document and where its relative media paths start."""

    document: Mapping[str, Any]
    folder: Path
    prefix: str = ""  # anchor prefix, to keep ids unique when a page holds several submissions
    episodes: list[Episode] = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.document, Mapping):
            raise ReportError("not a flateval results document (not a JSON object)")
        records = self.document.get("episodes")
        if not isinstance(records, list) or not all(isinstance(r, Mapping) for r in records):
            raise ReportError("not a flateval results document (no 'episodes' list)")
        self.episodes = _episodes(records, self.prefix, self.is_gymnasium)

    # ------------------------------------------------------------------ facts
    @property
    def settings(self) -> Mapping[str, Any]:
        return section(self.document, "settings")

    @property
    def score(self) -> Mapping[str, Any]:
        return section(self.document, "score")

    @property
    def env(self) -> str:
        return str(self.settings.get("env") or "flatland")

    @property
    def is_gymnasium(self) -> bool:
        return self.env.startswith("gymnasium")

    @property
    def submission_id(self) -> str:
        return str(self.document.get("submission_id") or "")

    @property
    def name(self) -> str:
        return str(self.document.get("name") or self.submission_id or "submission")

    @property
    def status(self) -> str:
        return str(self.document.get("status") or "unknown")

    @property
    def primary(self) -> float | None:
        return number(self.score.get("mean_normalized_return"))

    @property
    def secondary(self) -> float | None:
        return number(self.score.get("mean_percentage_complete"))

    @property
    def phase(self) -> str | None:
        return self.document.get("phase") or self.settings.get("phase")

    @property
    def step_deadline_s(self) -> float | None:
        return number(self.settings.get("step_timeout_s"))

    @property
    def wall_s(self) -> float | None:
        return number(section(self.document, "timing").get("wall_s"))

    @property
    def submitted_at(self) -> float | None:
        return number(section(self.document, "timing").get("submitted_at"))

    @property
    def agent_logs(self) -> Mapping[str, str]:
        return {str(k): str(v) for k, v in section(self.document, "agent_logs").items()}

    def count(self, *outcomes: str) -> int:
        return sum(e.outcome in outcomes for e in self.episodes)

    @property
    def timeouts(self) -> int:
        return self.count(TIMEOUT)

    @property
    def errors(self) -> int:
        return self.count(AGENT_ERROR, ENV_ERROR)

    def log_anchor(self, worker: str) -> str:
        return f"{self.prefix}log-{_slug(worker)}"

    # ------------------------------------------------------------------ layout
    def grid(self) -> Grid:
        """Tests by levels when every episode has both; else one row of episodes in order."""
        placed = [e for e in self.episodes if _is_int(e.record.get("test")) and _is_int(e.record.get("level"))]
        if self.episodes and len(placed) == len(self.episodes):
            tests = sorted({e.record["test"] for e in placed})
            levels = sorted({e.record["level"] for e in placed})
            at = {(e.record["test"], e.record["level"]): e for e in placed}
            return Grid([f"Test {t}" for t in tests], [f"Level {lv}" for lv in levels],
                         [[at.get((t, lv)) for lv in levels] for t in tests])
        row = self.env.partition(":")[2] or "episodes"
        return Grid([row], [e.short for e in self.episodes], [list(self.episodes)])


def _episodes(records: list[Mapping[str, Any]], prefix: str, gymnasium: bool) -> list[Episode]:
    episodes, taken = [], set()
    for position, record in enumerate(records):
        test, level = record.get("test"), record.get("level")
        if _is_int(test) and _is_int(level):
            label, short = f"Test {test} \u00b7 Level {level}", f"T{test} L{level}"
        elif _is_int(record.get("seed")) and gymnasium:
            env_id = str(record.get("env") or "").partition(":")[2]
            short = f"seed {record['seed']}"
            label = f"{env_id} \u00b7 {short}" if env_id else short
        else:
            label = short = str(record.get("env_file") or f"episode {position}")
        anchor = f"{prefix}{_slug(str(record.get('env_file') or label)) or 'episode'}"
        if anchor in taken:
            anchor = f"{anchor}-{position}"
        taken.add(anchor)
        episodes.append(Episode(record, anchor, label, short))
    return episodes


def _slug(text: str) -> str:
    """A readable fragment id: "Test_0/Level_1.pkl" -> "test-0-level-1"."""
    text = re.sub(r"\.(pkl|mpk)$", "", text.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return f"e-{slug}" if slug[:1].isdigit() else slug  # an id that is a CSS selector as it is


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def section(parent: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """`parent[key]` if it is a JSON object, else an empty one: a hand-edited document must not break the page."""
    value = parent.get(key)
    return value if isinstance(value, Mapping) else {}


def number(value: Any) -> float | None:
    """`value` if it is a number (JSON has no other check for it), else None."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
