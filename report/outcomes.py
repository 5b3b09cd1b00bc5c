"""How each episode outcome looks, in the grid and in the plots: a colour, and always a shape or
symbol and a word too, so nobody has to tell colours apart to read a report."""

from __future__ import annotations

from dataclasses import dataclass

from core.outcomes import AGENT_ERROR, COMPLETED, ENV_ERROR, STOPPED, TIMEOUT


@dataclass(frozen=True)
class OutcomeStyle:
    """One outcome's look. Colours are the Okabe-Ito palette (distinct under the common colour-vision
    deficiencies); `marker` and `hatch` are matplotlib's, `symbol` is the grid's: a character the fonts
    every Linux has (DejaVu) draw, since a missing glyph would leave a blank box."""

    outcome: str
    label: str
    symbol: str
    color: str
    marker: str
    hatch: str
    scored: bool = True


STYLES = {
    COMPLETED: OutcomeStyle(COMPLETED, "completed", "\u2713", "#009E73", "o", ""),
    TIMEOUT: OutcomeStyle(TIMEOUT, "timeout", "\u25F7", "#E69F00", "v", "//"),  # a clock face (in DejaVu Sans)
    AGENT_ERROR: OutcomeStyle(AGENT_ERROR, "agent error", "\u2717", "#D55E00", "X", "xx"),
    ENV_ERROR: OutcomeStyle(ENV_ERROR, "env error", "\u26A0\uFE0E", "#7F7F7F", "s", "..", scored=False),
    STOPPED: OutcomeStyle(STOPPED, "stopped", "\u25A0", "#56B4E9", "D", "--", scored=False),
}
UNKNOWN = OutcomeStyle("unknown", "unknown", "?", "#999999", "P", "++", scored=False)


def style(outcome: str | None) -> OutcomeStyle:
    """The look of `outcome`; an outcome this version does not know still gets one."""
    return STYLES.get(outcome or "", UNKNOWN)
