"""The report page: one self-contained HTML file (styles, plots and replays inlined, no script), built
with the standard library. Each function renders one part of the page, top to bottom."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from html import escape
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from core.challenge import NORMALIZATIONS
from core.outcomes import COMPLETED, TIMEOUT
from core.settings import FLATLAND
from report.media import Media, media
from report.model import Episode, Submission, number, section
from report.outcomes import STYLES, style
from report.plots import plots
from report.units import percent, score, seconds, size

WIDE = ' class="wide"'
WIDE_FACTS = ("Env file", "Worker")
"""Facts whose values are long names: they get two columns of the episode's facts."""
LOG_TAIL_LINES = 30
"""Lines of the agent's log shown with each episode (the whole stored tail is in the logs section)."""

DASH = "\u2013"
NARROW_SCREEN = "(max-width: 40rem)"
"""Where the page switches to its phone layout (style.css's breakpoint) and the plots to their narrow drawing."""
FLATLAND_SCALES = NORMALIZATIONS[FLATLAND]
"""Normalizations whose scores lie in [offset - 1, offset]: the grid's shading uses that fixed range."""


def render_report(documents: Sequence[Mapping[str, Any]], folders: Sequence[Path] | None = None,
                  link_from: Path | None = None) -> str:
    """The page for one results document, or a leaderboard and every submission's page for several.

    `folders` are where each document's relative recording paths start (default: the current folder);
    `link_from` is the folder the page will be written to, so its links to files can be relative.
    """
    folders = list(folders) if folders is not None else [Path.cwd()] * len(documents)
    several = len(documents) > 1
    submissions = [Submission(doc, folder, f"s{i + 1}-" if several else "")
                   for i, (doc, folder) in enumerate(zip(documents, folders))]
    if not several:
        only = submissions[0]
        return _page(f"{only.name} \u00b7 flateval report", _submission(only, 1, link_from))
    body = _leaderboard(submissions) + "".join(_submission(s, 2, link_from) for s in submissions)
    return _page(f"{len(submissions)} submissions \u00b7 flateval report", body)


def _page(title: str, body: str) -> str:
    css = files("report").joinpath("style.css").read_text(encoding="utf-8")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light">
<meta name="generator" content="flateval report">
<title>{escape(title)}</title>
<style>
{css}</style>
</head>
<body>
<main>
{body}
</main>
<footer><p>Made by <code>flateval report</code>. This page is self-contained: it works offline and without
JavaScript.</p></footer>
</body>
</html>
"""


# ---------------------------------------------------------------------------- leaderboard
def _leaderboard(submissions: list[Submission]) -> str:
    ranked = sorted(submissions, key=lambda s: (s.primary is None, -(s.primary or 0.0)))
    rows = []
    for rank, sub in enumerate(ranked, 1):
        secondary = percent(sub.secondary) if not sub.is_gymnasium else DASH
        place = str(rank) if sub.primary is not None else DASH
        rows.append(f"""<tr>
<td class="num">{place}</td>
<th scope="row"><a href="#{sub.prefix}top">{escape(sub.name)}</a>{_id_note(sub)}</th>
<td class="num strong">{score(sub.primary)}</td>
<td class="num">{secondary}</td>
<td>{_status(sub.status)}</td>
<td class="num">{len(sub.episodes)}</td>
<td class="num">{sub.timeouts}</td>
<td class="num">{sub.errors}</td>
<td class="num">{seconds(sub.wall_s)}</td>
</tr>""")
    return f"""<header class="page-head">
<p class="eyebrow">flateval &middot; report</p>
<h1>Leaderboard</h1>
<p class="lede">{len(submissions)} submissions compared; each has its full report below.</p>
</header>
<section id="leaderboard" aria-labelledby="leaderboard-h">
<h2 id="leaderboard-h" class="visually-hidden">Leaderboard</h2>
<p class="hint">Ranked by the primary score, the mean normalized return, best first; the secondary score is the
mean percentage of trains that reached their target.</p>
<div class="scroll" role="region" aria-label="Leaderboard table" tabindex="0">
<table class="board">
<caption class="visually-hidden">Leaderboard, best score first</caption>
<thead><tr><th scope="col">#</th><th scope="col">Submission</th>
<th scope="col">Mean normalized return</th><th scope="col">Mean % complete</th><th scope="col">Status</th>
<th scope="col">Episodes</th>
<th scope="col">Timeouts</th><th scope="col">Errors</th><th scope="col">Wall time</th></tr></thead>
<tbody>
{"".join(rows)}
</tbody>
</table>
</div>
</section>
"""


def _id_note(sub: Submission) -> str:
    if sub.submission_id and sub.submission_id != sub.name:
        return f'<span class="id">{escape(sub.submission_id)}</span>'
    return ""


# ---------------------------------------------------------------------------- one submission
def _submission(sub: Submission, level: int, link_from: Path | None) -> str:
    h = _headings(level)
    sections = [
        _grid(sub, h),
        _plots(sub, h),
        _details(sub, h, link_from),
        _logs(sub, h),
    ]
    nav = "".join(f'<li><a href="#{sub.prefix}{key}">{name}</a></li>'
                  for key, name in (("grid", "Episodes"), ("plots", "Plots"), ("details", "Details"),
                                    ("logs", "Agent logs")))
    if sub.prefix:  # one of several: the way back to the comparison
        nav += '<li><a href="#leaderboard">Leaderboard</a></li>'
    return f"""<article class="submission" id="{sub.prefix}top" aria-labelledby="{sub.prefix}title">
{_summary(sub, h)}
<nav aria-label="Sections of {escape(sub.name)}"><ul>{nav}</ul></nav>
{"".join(sections)}
</article>
"""


def _headings(level: int) -> list[str]:
    """The heading tags of a submission's title, its sections and its episodes."""
    return [f"h{min(level + i, 6)}" for i in range(3)]


def _summary(sub: Submission, h: list[str]) -> str:
    outcome_counts = " ".join(
        f'<span class="count o-{o}" title="{escape(look.label)}">'
        f'<span aria-hidden="true">{look.symbol}</span> {sub.count(o)}'
        f'<span class="visually-hidden"> {escape(look.label)}</span></span>'
        for o, look in STYLES.items() if sub.count(o) or look.scored)
    scored = sub.score.get("scored_episodes")
    scored_note = f"over {scored} scored episode{'s' if scored != 1 else ''}" if isinstance(scored, int) else ""
    if sub.is_gymnasium:
        second = _card("Mean return", score(number(sub.score.get("mean_return")), 2), "undiscounted, per episode")
    else:
        second = _card("Mean percentage complete", percent(sub.secondary), "trains that reached their target")
    error = f'<p class="error-line" role="alert">{escape(str(sub.document["error"]))}</p>' \
        if sub.document.get("error") else ""
    cards = [
        _card("Score \u00b7 mean normalized return", score(sub.primary), scored_note, primary=True),
        second,
        _card("Episodes", str(len(sub.episodes)), outcome_counts, raw_note=True),
        _card("Wall time", seconds(sub.wall_s), "first episode queued to last result"),
    ]
    return f"""<header class="page-head">
<p class="eyebrow">flateval &middot; {"submission report" if h[0] == "h1" else "submission"}</p>
<{h[0]} id="{sub.prefix}title">{escape(sub.name)}</{h[0]}>
<p class="status-line">{_status(sub.status)}{_id_note(sub)}</p>
{error}
<dl class="cards">
{"".join(cards)}
</dl>
{_limits(sub)}
</header>
"""


def _card(term: str, value: str, note: str = "", primary: bool = False, raw_note: bool = False) -> str:
    note_html = note if raw_note else escape(note)
    return (f'<div class="card{" primary" if primary else ""}"><dt>{escape(term)}</dt>'
            f'<dd class="value">{escape(value)}</dd>'
            + (f'<dd class="note">{note_html}</dd>' if note else "") + "</div>")


def _limits(sub: Submission) -> str:
    """The settings the episodes ran under: phase, time limits, what was played."""
    settings = sub.settings
    facts = [
        ("Phase", sub.phase),
        ("Planning limit", _deadline(settings, "planning_timeout_s")),
        ("Step limit", _deadline(settings, "step_timeout_s")),
        ("Episode limit", _secs(settings.get("episode_timeout_s"))),
        ("Overall limit", _secs(settings.get("overall_s"))),
        ("Challenge", sub.document.get("challenge")),
        ("Environment", sub.env),
        ("Seed", settings.get("seed")),
        ("Aggregation", sub.score.get("aggregation") or settings.get("aggregation")),
        ("Submitted", _date(sub.submitted_at)),
        ("Stopped by", sub.document.get("stopped_by")),
    ]
    items = "".join(f"<div><dt>{escape(k)}</dt><dd>{escape(str(v))}</dd></div>" for k, v in facts if v is not None)
    return f'<dl class="limits" aria-label="Settings and limits that applied">{items}</dl>'


def _status(status: str) -> str:
    symbol = {"finished": "\u2713", "failed": "\u2717", "cancelled": "\u2298"}.get(status, "\u2026")
    return f'<span class="status s-{escape(status)}"><span aria-hidden="true">{symbol}</span> {escape(status)}</span>'


# ---------------------------------------------------------------------------- grid
def _grid(sub: Submission, h: list[str]) -> str:
    grid = sub.grid()
    shade = _shading(sub)
    head = "".join(f'<th scope="col">{escape(c)}</th>' for c in grid.columns)
    body = "".join(
        f'<tr><th scope="row">{escape(row)}</th>{"".join(_cell(sub, e, shade) for e in cells)}</tr>'
        for row, cells in zip(grid.rows, grid.cells))
    corner = "Test \\ Level" if len(grid.rows) > 1 or grid.rows[0].startswith("Test") else "Env \\ Episode"
    table = (f'<div class="scroll" role="region" aria-label="Episode grid" tabindex="0"><table class="grid">'
             f'<caption class="visually-hidden">Episodes by test and level: outcome and normalized return; each '
             f'cell links to the episode\'s detail</caption>'
             f'<thead><tr><th scope="col" class="corner">{corner}</th>{head}</tr></thead><tbody>{body}</tbody>'
             f'</table></div>') if sub.episodes else '<p class="empty">No episode has a result yet.</p>'
    return f"""<section id="{sub.prefix}grid" aria-labelledby="{sub.prefix}grid-h">
<{h[1]} id="{sub.prefix}grid-h">Episodes</{h[1]}>
<p class="hint">Each cell is one episode: its outcome and normalized return{"" if sub.is_gymnasium else
                                                                             ", and the trains that reached home"}.
Select a cell for the episode's detail.</p>
{table}
{_legend(sub, shade)}
</section>
"""


def _shading(sub: Submission) -> tuple[float, float]:
    """The range of normalized return the completed cells' shading spans."""
    if not sub.is_gymnasium and sub.settings.get("normalization", FLATLAND_SCALES[0]) in FLATLAND_SCALES:
        offset = number(sub.settings.get("score_offset")) or 0.0
        return offset - 1.0, offset
    values = [e.normalized_return for e in sub.episodes if e.normalized_return is not None]
    return (min(values), max(values)) if values else (0.0, 1.0)


def _cell(sub: Submission, episode: Episode | None, shade: tuple[float, float]) -> str:
    if episode is None:
        return '<td class="cell none"><span aria-label="no episode">\u00b7</span></td>'
    look = style(episode.outcome)
    nr = episode.normalized_return
    if sub.is_gymnasium:
        sub_line = f"{episode.get('steps', '?')} steps"
    elif episode.trains_home is not None:
        sub_line = f"{episode.trains_home}/{episode.record.get('n_agents')} home"
    else:
        sub_line = "not scored" if not look.scored else ""
    words = f"{episode.label}: {look.label}, normalized return {score(nr, 3)}"
    if episode.trains_home is not None and not sub.is_gymnasium:
        words += f", {episode.trains_home} of {episode.record.get('n_agents')} trains home"
    colours = ""
    if episode.outcome == COMPLETED and nr is not None:
        background, ink = _green(nr, *shade)
        colours = f' style="--bg:{background};--ink:{ink}"'
    return (f'<td class="cell o-{escape(look.outcome)}" data-outcome="{escape(str(episode.outcome))}"{colours}>'
            f'<a href="#{episode.anchor}" title="{escape(words)}" aria-label="{escape(words)}. Details">'
            f'<span class="sym" aria-hidden="true">{look.symbol}</span>'
            f'<span class="nr">{score(nr, 3) if nr is not None else "n/a"}</span>'
            f'<span class="sub">{escape(sub_line)}</span></a></td>')


LIGHT, DARK = (0xDF, 0xF3, 0xE8), (0x0B, 0x5F, 0x45)
WHITE, BLACK = (255, 255, 255), (0, 0, 0)
"""The completed cells' text: the better of the two has at least 4.58:1 contrast on any background (WCAG AA)."""


def _green(value: float, low: float, high: float) -> tuple[str, str]:
    """A completed cell's background (pale for a poor return, deep for a good one) and the text colour
    that reads best on it (WCAG contrast)."""
    t = 1.0 if high <= low else min(max((value - low) / (high - low), 0.0), 1.0)
    rgb = tuple(round(a + (b - a) * t) for a, b in zip(LIGHT, DARK))
    ink = WHITE if _contrast(rgb, WHITE) >= _contrast(rgb, BLACK) else BLACK
    return _hex(rgb), _hex(ink)


def _hex(rgb: tuple[int, ...]) -> str:
    return "#%02x%02x%02x" % rgb


def _contrast(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    def luminance(rgb: tuple[int, ...]) -> float:
        channels = [c / 255 for c in rgb]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def _legend(sub: Submission, shade: tuple[float, float]) -> str:
    present = [o for o in STYLES if sub.count(o)] or [COMPLETED]
    items = "".join(
        f'<li><span class="swatch o-{o}" aria-hidden="true">{STYLES[o].symbol}</span> {escape(STYLES[o].label)}'
        f'{" (not scored)" if not STYLES[o].scored else ""}</li>' for o in present)
    low_bg, _ = _green(shade[0], *shade)
    high_bg, _ = _green(shade[1], *shade)
    span = f"{score(shade[0], 2)} to {score(shade[1], 2)}"
    ramp = (f'<li><span class="ramp" style="--from:{low_bg};--to:{high_bg}" aria-hidden="true"></span> '
            f'completed: the deeper the green, the higher the return ({span})</li>')
    return f'<ul class="legend" aria-label="Legend">{items}{ramp}</ul>'


# ---------------------------------------------------------------------------- plots
def _plots(sub: Submission, h: list[str]) -> str:
    figures = "".join(
        f'<figure class="plot" id="{sub.prefix}plot-{p.key}"><figcaption>{escape(p.title)}</figcaption>'
        f'<picture><source media="{NARROW_SCREEN}" srcset="{p.image.narrow}">'
        f'<img src="{p.image.wide}" alt="{escape(p.alt)}" title="{escape(p.alt)}"></picture></figure>'
        for p in plots(sub))
    return f"""<section id="{sub.prefix}plots" aria-labelledby="{sub.prefix}plots-h">
<{h[1]} id="{sub.prefix}plots-h">Plots</{h[1]}>
{figures or '<p class="empty">No episode has data to plot yet.</p>'}
</section>
"""


# ---------------------------------------------------------------------------- episode details
def _usage(record: Mapping[str, Any], key: str, unit: Callable[[float], str]) -> str | None:
    """What the agent used in the episode (`agent_usage`), where it was measured."""
    value = number(section(record, "agent_usage").get(key))
    return None if value is None else unit(value)


def _details(sub: Submission, h: list[str], link_from: Path | None) -> str:
    articles = "".join(_episode(sub, e, h[2], link_from) for e in sub.episodes)
    return f"""<section id="{sub.prefix}details" aria-labelledby="{sub.prefix}details-h">
<{h[1]} id="{sub.prefix}details-h">Episode details</{h[1]}>
{articles or '<p class="empty">No episode has a result yet.</p>'}
</section>
"""


def _episode(sub: Submission, episode: Episode, tag: str, link_from: Path | None) -> str:
    look = style(episode.outcome)
    record = episode.record
    steps = record.get("steps")
    max_steps = record.get("max_episode_steps")
    facts = [("Normalized return", score(episode.normalized_return))]
    if sub.is_gymnasium:
        facts.append(("Return", score(number(record.get("return", record.get("cumulative_reward"))), 2)))
    else:
        home, n = episode.trains_home, record.get("n_agents")
        facts.append(("Trains home", f"{home} of {n} ({percent(record.get('percentage_complete'))})"
                      if home is not None else DASH))
    facts += [
        ("Steps", DASH if steps is None else f"{steps} of {max_steps}" if max_steps else str(steps)),
        ("Duration", seconds(number(record.get("duration_s")))),
        ("Agent CPU", _usage(record, "cpu_s", seconds)),
        ("Agent peak memory", _usage(record, "peak_memory_bytes", size)),
        ("Env file", record.get("env_file")),
        ("Seed", record.get("seed")),
        ("Worker", record.get("worker")),
    ]
    dl = "".join(f'<div{WIDE if k in WIDE_FACTS else ""}><dt>{escape(k)}</dt><dd>{escape(str(v))}</dd></div>'
                 for k, v in facts if v is not None)
    error = (f'<div class="error"><p class="label">Error</p><pre>{escape(str(record["error"]))}</pre></div>'
             if record.get("error") else "")
    return f"""<article class="episode o-{escape(look.outcome)}" id="{episode.anchor}"
aria-labelledby="{episode.anchor}-h"><header><{tag} id="{episode.anchor}-h">{escape(episode.label)}</{tag}>
<span class="badge o-{escape(look.outcome)}"><span aria-hidden="true">{look.symbol}</span> {escape(look.label)}</span>
<a class="up" href="#{sub.prefix}grid">Back to the grid</a></header>
<dl class="facts">{dl}</dl>
{error}
{_response(sub, episode)}
{_recordings(sub, episode, link_from)}
{_log_tail(sub, episode)}
</article>
"""


def _response(sub: Submission, episode: Episode) -> str:
    """The agent's response times against the deadlines that applied."""
    response = episode.response
    step_limit = sub.step_deadline_s
    planning_limit = number(sub.settings.get("planning_timeout_s"))
    rows = [("Planning", number(response.get("planning_s")), planning_limit),
            ("Step p50", number(response.get("p50_s")), step_limit),
            ("Step p95", number(response.get("p95_s")), step_limit),
            ("Step max", number(response.get("max_s")), step_limit)]
    if not any(value is not None for _, value, _ in rows):
        return ""
    body = "".join(f'<tr><th scope="row">{escape(name)}</th><td class="num">{seconds(value)}</td>'
                   f'<td>{_share(value, limit)}</td></tr>' for name, value, limit in rows)
    if episode.outcome == TIMEOUT:  # the reply that never came is the one that matters
        limit = step_limit if episode.missed_a_step else planning_limit
        body += (f'<tr class="missed"><th scope="row">Missed reply</th><td class="num">&gt; {seconds(limit)}</td>'
                 f'<td>{_share(limit, limit, missed=True)}</td></tr>')
    count = response.get("count")
    replies = f"{count} step replies; " if isinstance(count, int) else ""
    caption = f"Agent response times ({replies}planning covers the handshake and the first actions)"
    return (f'<div class="scroll"><table class="response"><caption>{escape(caption)}</caption>'
            f'<thead><tr><th scope="col">Reply</th><th scope="col">Time</th><th scope="col">Of its deadline'
            f'</th></tr></thead><tbody>{body}</tbody></table></div>')


def _share(value: float | None, limit: float | None, missed: bool = False) -> str:
    """`value` as a share of `limit`: a meter (green, amber near the limit, red at it) and the number."""
    if value is None or not limit:
        return DASH
    share = value / limit
    if missed:
        text = "deadline missed"
    else:
        text = f"{share * 100:{'.2f' if share < 0.1 else '.0f'}} % of {seconds(limit)}"
    return (f'<meter min="0" max="{limit}" low="{limit * 0.5}" high="{limit * 0.8}" optimum="0" '
            f'value="{min(value, limit)}" aria-hidden="true"></meter> <span>{escape(text)}</span>')


def _recordings(sub: Submission, episode: Episode, link_from: Path | None) -> str:
    parts = []
    trajectory = episode.record.get("trajectory")
    if isinstance(trajectory, str) and trajectory:
        found = media(trajectory, sub.folder, link_from, embed=False)
        parts.append(f'<p><span class="label">Trajectory</span> {_file_link(found)}</p>')
    video = episode.record.get("video")
    if isinstance(video, str) and video:
        found = media(video, sub.folder, link_from, embed=True)
        described = f"Replay of {episode.label} ({style(episode.outcome).label})"
        if found.kind == "video" and found.data_uri:
            parts.append(f'<figure class="replay"><video controls preload="metadata" src="{found.data_uri}" '
                         f'aria-label="{escape(described)}"></video><figcaption>Replay &middot; '
                         f'{_file_link(found)}</figcaption></figure>')
        elif found.kind == "image" and found.data_uri:
            parts.append(f'<figure class="replay"><img src="{found.data_uri}" alt="{escape(described)}">'
                         f'<figcaption>Replay &middot; {_file_link(found)}</figcaption></figure>')
        else:
            parts.append(f'<p><span class="label">Replay</span> {_file_link(found)}</p>')
    return f'<div class="recordings">{"".join(parts)}</div>' if parts else ""


def _file_link(found: Media) -> str:
    shown = f"<code>{escape(found.shown)}</code>"
    link = f'<a href="{escape(found.href)}">{shown}</a>' if found.href else shown
    return link + (f' <span class="muted">({escape(found.note)})</span>' if found.note else "")


def _log_tail(sub: Submission, episode: Episode) -> str:
    worker = episode.record.get("worker")
    log = sub.agent_logs.get(str(worker)) if worker else None
    if not log:
        return ""
    lines = _clean(log).rstrip("\n").split("\n")
    tail = "\n".join(lines[-LOG_TAIL_LINES:])
    shown = "the last line" if len(lines) == 1 else f"the last {min(len(lines), LOG_TAIL_LINES)} lines"
    opened = " open" if episode.outcome not in (COMPLETED, None) else ""
    return (f'<details class="log"{opened}><summary>Agent log of <code>{escape(str(worker))}</code> '
            f'({shown})</summary><pre>{escape(tail)}</pre>'
            f'<p><a href="#{sub.log_anchor(str(worker))}">The whole stored log</a></p></details>')


# ---------------------------------------------------------------------------- agent logs
def _logs(sub: Submission, h: list[str]) -> str:
    blocks = "".join(
        f'<section class="agent-log" id="{sub.log_anchor(name)}" aria-label="Log of {escape(name)}">'
        f'<p class="label"><code>{escape(name)}</code> &middot; {len(text):,} characters</p>'
        f'<pre tabindex="0">{escape(_clean(text))}</pre></section>'
        for name, text in sorted(sub.agent_logs.items()))
    return f"""<section id="{sub.prefix}logs" aria-labelledby="{sub.prefix}logs-h">
<{h[1]} id="{sub.prefix}logs-h">Agent logs</{h[1]}>
<p class="hint">The last characters each agent printed, one log per worker&ndash;agent pair.</p>
{blocks or '<p class="empty">No agent output was kept.</p>'}
</section>
"""


ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _clean(text: str) -> str:
    """Terminal colour codes and other control characters out; tabs and newlines kept."""
    return "".join(c for c in ANSI.sub("", text.replace("\r\n", "\n")) if c in "\n\t" or c >= " ")


# ---------------------------------------------------------------------------- small helpers
def _deadline(settings: dict, key: str) -> str | None:
    """A deadline the episodes ran under; "none" where the challenge set none (FAB's behaviour)."""
    return "none" if key in settings and settings[key] is None else _secs(settings.get(key))


def _secs(value: Any) -> str | None:
    value = number(value)
    return seconds(value) if value is not None else None


def _date(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

