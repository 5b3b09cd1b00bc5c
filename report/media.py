"""An episode's recorded files (trajectory, replay video): found relative to its results file, videos
read into data URIs so the page needs nothing beside it."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

MAX_EMBED_BYTES = 32 * 1024 * 1024
"""A replay larger than this is linked, not embedded: the page must still open quickly."""

VIDEO_TYPES = {".mp4": "video/mp4", ".webm": "video/webm"}
IMAGE_TYPES = {".gif": "image/gif", ".png": "image/png", ".webp": "image/webp"}


@dataclass(frozen=True)
class Media:
    """A recorded file as the page shows it."""

    shown: str  # the path as the record gives it
    href: str | None  # a link to the file, None when it is not there
    data_uri: str | None = None  # the file itself, for a video or animation small enough to embed
    kind: str = "file"  # "video", "image" or "file"
    note: str | None = None  # why it is not embedded


def locate(path: str, folder: Path) -> Path:
    """A record's path: absolute as it is, else relative to the results file's folder."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else folder / candidate


def media(path: str, folder: Path, link_from: Path | None, embed: bool) -> Media:
    """Find `path` (a file, or a folder: a recorded trajectory is one); with `embed`, inline it when
    it is a video or animation of a sensible size."""
    found = locate(path, folder)
    if not found.exists():
        return Media(path, None, note="not found")
    href = _href(found, link_from)
    suffix = found.suffix.lower()
    mime, kind = (VIDEO_TYPES.get(suffix), "video") if suffix in VIDEO_TYPES else (IMAGE_TYPES.get(suffix), "image")
    if not embed or mime is None or not found.is_file():
        return Media(path, href, note=None if not embed else f"not a video ({suffix or 'no suffix'})")
    size = found.stat().st_size
    if size > MAX_EMBED_BYTES:
        return Media(path, href, note=f"{size / 2**20:.0f} MiB: too large to embed")
    data = base64.b64encode(found.read_bytes()).decode("ascii")
    return Media(path, href, f"data:{mime};base64,{data}", kind)


def _href(found: Path, link_from: Path | None) -> str:
    """A relative link when the page's folder is known (page and files move together), else file://."""
    if link_from is not None:
        try:
            return quote(Path(os.path.relpath(found.resolve(), link_from.resolve())).as_posix())
        except ValueError:  # another drive (Windows)
            pass
    return found.resolve().as_uri()
