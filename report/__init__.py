"""Submission reports: one self-contained HTML page (score, episode grid, plots, details, agent logs)
from one results document, or a leaderboard and pages for several. Imports only `core` and `scoring` below it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from report.model import ReportError, Submission
from report.page import render_report

__all__ = ["ReportError", "check_document", "render_report", "write_report"]


def check_document(document: Any) -> None:
    """Raise `ReportError` unless `document` is a results document a report can be made from."""
    Submission(document, Path("."))


def write_report(documents: Sequence[Mapping[str, Any]], folders: Sequence[Path], output: Path) -> None:
    """Render and write the page; links to recorded files are made relative to `output`'s folder."""
    if not documents:
        raise ReportError("no results to report on")
    html = render_report(documents, folders, link_from=output.resolve().parent)
    try:
        output.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write {output}: {exc.strerror or exc}") from None
