"""The report's three plots, drawn by matplotlib and returned as SVG data URIs with their alt text.

Only matplotlib's object API is used (no pyplot): no global backend or state is touched, so making a
report inside another program changes nothing there. Output is deterministic: a fixed hash salt per
plot, text as paths (no font needed to view it), no date in the metadata.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from statistics import fmean
from typing import Callable, Sequence

import matplotlib
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator

from core.outcomes import TIMEOUT
from report.model import Episode, Submission
from report.outcomes import style
from report.units import seconds

INK = "#1f2933"
MUTED = "#52606d"
GRID = "#e4e7eb"
RC = {
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9.5,
    "axes.edgecolor": MUTED,
    "axes.labelcolor": INK,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "text.color": INK,
    "legend.frameon": False,
}
MAX_LABELLED = 40
"""With more episodes than this, bars carry no per-episode tick labels (they would overlap)."""


@dataclass(frozen=True)
class Rendered:
    """A plot drawn twice: for a page column, and narrower and taller for a phone's screen."""

    wide: str  # SVG data URIs
    narrow: str


@dataclass(frozen=True)
class Plot:
    """One rendered plot: a title for its caption, the alt text that says what it shows, the images."""

    key: str
    title: str
    alt: str
    image: Rendered


def plots(submission: Submission) -> list[Plot]:
    """The plots there is data for, in page order."""
    made = (returns_plot(submission), response_plot(submission), duration_plot(submission))
    return [plot for plot in made if plot is not None]


# ---------------------------------------------------------------------------- normalized return
def returns_plot(submission: Submission) -> Plot | None:
    """Normalized return of every scored episode, grouped by test with each test's mean (Flatland), or
    one bar per episode (an env of no test set)."""
    scored = [e for e in submission.episodes if e.normalized_return is not None]
    if not scored:
        return None
    by_test = all(isinstance(e.record.get("test"), int) for e in scored)

    def draw(ax: Axes) -> None:
        if by_test:
            _returns_by_test(ax, scored)
        else:
            _bars(ax, scored, lambda e: e.normalized_return)
        if submission.primary is not None:
            ax.axhline(submission.primary, color=INK, linestyle="--", linewidth=1, zorder=1)
            ax.annotate(f"score {submission.primary:.3f}", (1, submission.primary), xycoords=("axes fraction", "data"),
                        xytext=(-2, 3), textcoords="offset points", ha="right", va="bottom", fontsize=8.5, color=INK)
        ax.set_ylabel("normalized return")
        ax.axhline(0, color=MUTED, linewidth=0.6, zorder=1)

    extra = [Line2D([], [], color=INK, linewidth=2.2, label="mean of the test")] if by_test else []
    image = _render(f"{submission.prefix}returns", draw, scored, extra, bars=not by_test)
    if by_test:
        tests = sorted({e.record["test"] for e in scored})
        means = ", ".join(f"Test {t} {fmean(e.normalized_return for e in scored if e.record['test'] == t):.3f}"
                          for t in tests)
        alt = f"Normalized return of {len(scored)} scored episodes by test. Mean per test: {means}."
    else:
        alt = (f"Normalized return of {len(scored)} scored episodes, from "
               f"{min(e.normalized_return for e in scored):.3f} to {max(e.normalized_return for e in scored):.3f}.")
    if submission.primary is not None:
        alt += f" Submission score {submission.primary:.4f} (dashed line)."
    return Plot("returns", "Normalized return per test" if by_test else "Normalized return per episode", alt, image)


def _returns_by_test(ax: Axes, scored: list[Episode]) -> None:
    tests = sorted({e.record["test"] for e in scored})
    for x, test in enumerate(tests):
        group = sorted((e for e in scored if e.record["test"] == test), key=lambda e: e.record.get("level") or 0)
        offsets = _spread(len(group), 0.28)
        for episode, dx in zip(group, offsets):
            look = style(episode.outcome)
            ax.scatter(x + dx, episode.normalized_return, marker=look.marker, s=52, color=look.color,
                       edgecolors=INK, linewidths=0.6, zorder=3)
        mean = fmean(e.normalized_return for e in group)
        ax.hlines(mean, x - 0.38, x + 0.38, color=INK, linewidth=2.2, zorder=2)
    ax.set_xticks(range(len(tests)), [f"Test {t}" for t in tests],
                  rotation=45 if len(tests) > (5 if _narrow(ax) else 10) else 0)
    ax.set_xlim(-0.6, len(tests) - 0.4)
    ax.grid(axis="y", color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)


# ---------------------------------------------------------------------------- agent response
RESPONSE_ROWS = (("p50_s", "median (p50)"), ("p95_s", "p95"), ("max_s", "max"))


def response_plot(submission: Submission) -> Plot | None:
    """Each episode's median, p95 and slowest step response on a log scale, against the step deadline."""
    rows = [(key, name) for key, name in RESPONSE_ROWS
            if any(_positive(e.response.get(key)) for e in submission.episodes)]
    if not rows:
        return None
    deadline = submission.step_deadline_s
    timeouts = [e for e in submission.episodes if e.missed_a_step]

    def draw(ax: Axes) -> None:
        for y, (key, _) in enumerate(rows):
            shown = [e for e in submission.episodes if _positive(e.response.get(key))]
            for episode, dy in zip(shown, _spread(len(shown), 0.3)):
                look = style(episode.outcome)
                ax.scatter(episode.response[key], y + dy, marker=look.marker, s=40, color=look.color,
                           edgecolors=INK, linewidths=0.5, alpha=0.9, zorder=3)
        if deadline:
            ax.axvline(deadline, color="#B42318", linestyle="--", linewidth=1.4, zorder=2)
            ax.annotate(f"step deadline {seconds(deadline)}", (deadline, 1), xycoords=("data", "axes fraction"),
                        xytext=(-4, -2), textcoords="offset points", ha="right", va="top", fontsize=8.5,
                        color="#B42318")
            if timeouts:
                ax.scatter([deadline] * len(timeouts), [len(rows) - 1 + dy for dy in _spread(len(timeouts), 0.3)],
                           marker=">", s=60, color=style(TIMEOUT).color, edgecolors=INK, linewidths=0.6, zorder=4)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=4 if _narrow(ax) else "auto"))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: seconds(v, digits=1)))
        ax.set_yticks(range(len(rows)), [name for _, name in rows])
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlabel("agent response time per step (log scale)")
        ax.grid(axis="x", color=GRID, linewidth=0.8)
        ax.set_axisbelow(True)

    extra = []
    if timeouts and deadline:
        extra.append(Line2D([], [], marker=">", linestyle="", markersize=7, color=style(TIMEOUT).color,
                            markeredgecolor=INK, label="missed the deadline"))
    shown = [e for e in submission.episodes if any(_positive(e.response.get(k)) for k, _ in rows)]
    image = _render(f"{submission.prefix}response", draw, shown + timeouts, extra, height=2.2 + 0.35 * len(rows))
    worst = max((e.response.get("max_s") for e in shown if _positive(e.response.get("max_s"))), default=None)
    alt = f"Agent response time per step of {len(shown)} episodes (median, p95 and max of each), log scale."
    if worst is not None:
        alt += f" Slowest reply {seconds(worst)}"
        alt += f" against a step deadline of {seconds(deadline)}." if deadline else "."
    if timeouts:
        alt += f" {len(timeouts)} episode(s) missed the deadline."
    return Plot("response", "Agent response time against the step deadline", alt, image)


# ---------------------------------------------------------------------------- duration
def duration_plot(submission: Submission) -> Plot | None:
    """How long each episode took, env errors included (they cost time too)."""
    timed = [e for e in submission.episodes if _positive(e.record.get("duration_s"))]
    if not timed:
        return None

    def draw(ax: Axes) -> None:
        _bars(ax, timed, lambda e: e.record["duration_s"])
        ax.set_ylabel("seconds")

    image = _render(f"{submission.prefix}duration", draw, timed, [], bars=True)
    durations = [e.record["duration_s"] for e in timed]
    longest = max(timed, key=lambda e: e.record["duration_s"])
    alt = (f"Duration of {len(timed)} episodes: {seconds(sum(durations))} in all, longest {longest.label} "
           f"at {seconds(longest.record['duration_s'])}.")
    return Plot("duration", "Episode duration", alt, image)


# ---------------------------------------------------------------------------- shared
def _bars(ax: Axes, episodes: list[Episode], value: Callable[[Episode], float]) -> None:
    """One bar per episode in order, coloured and hatched by outcome."""
    for x, episode in enumerate(episodes):
        look = style(episode.outcome)
        ax.bar(x, value(episode), color=look.color, hatch=look.hatch or None, edgecolor=INK, linewidth=0.5,
               width=0.75, zorder=2)
    if len(episodes) <= MAX_LABELLED:
        crowded = len(episodes) > (4 if _narrow(ax) else 8)
        ax.set_xticks(range(len(episodes)), [e.short for e in episodes], rotation=90 if crowded else 0,
                      fontsize=8.5 if crowded else 9.5)
    else:
        ax.set_xlabel("episode")
    ax.set_xlim(-0.6, len(episodes) - 0.4)
    ax.grid(axis="y", color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)


WIDE_INCHES, NARROW_INCHES = 7.2, 4.0


def _render(salt: str, draw: Callable[[Axes], None], episodes: Sequence[Episode], extra: list,
            height: float = 3.2, bars: bool = False) -> Rendered:
    """Draw the plot wide and narrow, each with the legend of the outcomes shown."""
    handles = [_legend_handle(outcome, bars) for outcome in _present(episodes)] + extra
    return Rendered(_svg(f"{salt}-wide", draw, handles, WIDE_INCHES, height, columns=5),
                    _svg(f"{salt}-narrow", draw, handles, NARROW_INCHES, height + 0.6, columns=2))


def _svg(salt: str, draw: Callable[[Axes], None], handles: list, width: float, height: float, columns: int) -> str:
    """Draw on a fresh figure and return it as an SVG data URI."""
    with matplotlib.rc_context({**RC, "svg.hashsalt": f"flateval-report-{salt}"}):
        figure = Figure(figsize=(width, height), layout="constrained")
        ax = figure.add_subplot()
        draw(ax)
        if handles:  # above the axes; "outside" makes the constrained layout leave room for it
            figure.legend(handles=handles, loc="outside upper left", ncol=min(len(handles), columns),
                          handletextpad=0.4, columnspacing=1.2, fontsize=8.5)
        out = io.BytesIO()
        figure.savefig(out, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(out.getvalue()).decode("ascii")



def _legend_handle(outcome: str, bar: bool) -> Artist:
    look = style(outcome)
    if bar:
        return Patch(facecolor=look.color, hatch=look.hatch or None, edgecolor=INK, linewidth=0.5, label=look.label)
    return Line2D([], [], marker=look.marker, linestyle="", markersize=7, color=look.color,
                  markeredgecolor=INK, label=look.label)


def _present(episodes: Sequence[Episode]) -> list[str]:
    seen: list[str] = []
    for episode in episodes:
        if episode.outcome not in seen:
            seen.append(episode.outcome)
    return seen


def _spread(n: int, width: float) -> list[float]:
    """`n` evenly spaced offsets in [-width, width]: points of one group side by side, the same every time."""
    if n <= 1:
        return [0.0] * n
    return [-width + 2 * width * i / (n - 1) for i in range(n)]


def _narrow(ax: Axes) -> bool:
    """Whether this is the phone's drawing (fewer ticks, labels turned sooner)."""
    return ax.figure.get_figwidth() < WIDE_INCHES


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)
