"""Where `flateval run` keeps a submission's results: `--output`, else a default file whose path it
prints. The embedded Redis goes away with the run, so this file is the only copy: it is never lost
(a file that cannot be written falls back to the default folder, then to the temp folder)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

RESULTS_DIR = "flateval-results"
"""Relative to the current folder: ./flateval-results/<submission id>.json."""


def results_json(document: dict[str, Any]) -> str:
    """The results document as every file of it is written."""
    return json.dumps(document, indent=2, default=str) + "\n"


def default_results_path(submission_id: str, root: Path | None = None) -> Path:
    """./flateval-results/<id>.json (relative, as it is printed), or under `root`."""
    return (root or Path()) / RESULTS_DIR / f"{submission_id}.json"


def save_results(document: dict[str, Any], output: str | None) -> tuple[Path, str | None]:
    """Write the results document to `output`, else to the default path; returns where it went and,
    when the first choice could not be written, one line saying why."""
    text = results_json(document)
    sid = str(document.get("submission_id") or "results")
    choices = [Path(output)] if output else []
    choices += [default_results_path(sid), default_results_path(sid, Path(tempfile.gettempdir()))]
    problem = None
    for path in choices:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError as exc:
            problem = problem or f"cannot write {path}: {exc.strerror or exc}"
            continue
        return path, problem
    raise OSError(problem)
