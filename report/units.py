"""Numbers as a person reads them: durations in the unit that suits them, scores at a fixed precision."""

from __future__ import annotations


def seconds(value: float | None, digits: int = 2) -> str:
    """0.000041 -> "41 µs", 0.0123 -> "12 ms", 1.5 -> "1.5 s", 28800 -> "8 h"; "–" for none."""
    if value is None:
        return "\u2013"
    if value == 0:
        return "0 s"
    for unit, size in (("h", 3600.0), ("min", 60.0)):
        if value >= 2 * size:  # 90 s reads better than 1.5 min; 2 h 30 min is "2.5 h"
            return f"{_significant(value / size, digits + 1)} {unit}"
    for unit, size in (("s", 1.0), ("ms", 1e-3), ("\u00b5s", 1e-6)):
        if value >= size:
            return f"{_significant(value / size, digits)} {unit}"
    return f"{_significant(value / 1e-9, digits)} ns"


def _significant(value: float, digits: int) -> str:
    """At least `digits` significant figures, never scientific notation, no trailing zeros."""
    if value >= 10 ** digits:
        return f"{value:.0f}"
    text = f"{value:.{max(digits - 1 - _magnitude(value), 0)}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _magnitude(value: float) -> int:
    magnitude = 0
    while value >= 10:
        value /= 10
        magnitude += 1
    return magnitude


def score(value: float | None, places: int = 4) -> str:
    """A score at a fixed precision (columns of them line up); "–" for none. Adding 0.0 turns -0.0 into 0.0."""
    return "\u2013" if value is None else f"{value + 0.0:.{places}f}"


def percent(fraction: float | None, places: int = 1) -> str:
    return "\u2013" if fraction is None else f"{fraction * 100:.{places}f} %"


def size(value: float) -> str:
    """Bytes as a person reads them: 19443712 -> "18.5 MiB"."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale:
            return f"{_significant(value / scale, 3)} {unit}"
    return f"{value:.0f} B"
