"""The folder of one recorded episode: where it goes, how it becomes complete, and how it is found again.

    <record dir>/<submission id>/<ep_id>/              a complete recording (flatland: a Trajectory data dir)
        manifest.json                                  what was recorded, the result, a sha256 per file
    <record dir>/<submission id>/.partial/<ep_id>.<attempt>/   an attempt still running, or cut short by a
        attempt.json                                   dead worker: never mistaken for a complete one

An attempt is written in its ``.partial`` folder and renamed to ``<ep_id>`` only once every file and
its manifest are on disk (a rename is atomic on one filesystem), so a worker killed mid-episode leaves
an attempt folder that `flateval verify` reports as incomplete, and a re-run of the episode writes
its own recording cleanly. The manifest's digest goes into the episode's result too, so an edited
file is caught even when the manifest is rewritten with it (docs/audit.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from env_worker.gymnasium_recorder import FILE as GYMNASIUM_FILE

MANIFEST = "manifest.json"
ATTEMPT = "attempt.json"
PARTIAL = ".partial"
OUTPUTS = "outputs"  # flatland's outputs dir: videos and other derived files, never part of the digest
FORMAT = "flateval-recording/1"
LOCAL_SUBMISSION = "local"  # the submission folder of an episode played outside any submission


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def begin_attempt(root: Path, submission_id: str | None, ep_id: str) -> Path:
    """A fresh folder for one attempt at recording `ep_id`, marked as an attempt until committed."""
    partial = Path(root) / (submission_id or LOCAL_SUBMISSION) / PARTIAL
    folder = partial / f"{ep_id}.{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    _write_json(folder / ATTEMPT, {"format": FORMAT, "ep_id": ep_id, "worker": worker_id(), "started_at": time.time()})
    return folder


def recorded_files(folder: Path) -> dict[str, str]:
    """sha256 of every recorded file, by path relative to the folder (outputs/ and the manifest excluded)."""
    digests = {}
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in (MANIFEST, ATTEMPT) and not rel.startswith(OUTPUTS + "/"):
            digests[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def digest_of(files: dict[str, str]) -> str:
    """One sha256 for the whole recording: over each file's path and sha256, in path order."""
    return hashlib.sha256("".join(f"{rel}\0{sha}\n" for rel, sha in sorted(files.items())).encode()).hexdigest()


def commit(attempt: Path, manifest: dict[str, Any]) -> tuple[Path, str]:
    """Make an attempt a complete recording: fsync its files, write its manifest (with the files'
    digests), and rename it to ``<submission>/<ep_id>``. A complete recording already there (a re-run
    raced an attempt thought dead) is moved aside into ``.partial`` first, never deleted. Returns the
    final folder and the digest."""
    files = recorded_files(attempt)
    for rel in files:
        _fsync(attempt / rel)
    digest = digest_of(files)
    _write_json(attempt / MANIFEST, {"format": FORMAT, **manifest, "files": files, "digest": digest})
    final = attempt.parent.parent / manifest["ep_id"]
    if final.exists():
        final.rename(attempt.parent / f"{manifest['ep_id']}.superseded-{uuid.uuid4().hex[:12]}")
    attempt.rename(final)
    _fsync(final.parent)
    (final / ATTEMPT).unlink()  # after the rename: a manifest outside .partial is what makes a recording complete
    try:
        attempt.parent.rmdir()  # no attempt left: no .partial folder
    except OSError:
        pass
    return final, digest


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.rename(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> dict[str, Any] | None:
    """A manifest or attempt file; None if it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------------------------------- finding

COMPLETE, INCOMPLETE, SUPERSEDED, UNKNOWN = "complete", "incomplete", "superseded", "unknown"


@dataclass(frozen=True)
class FoundEpisode:
    """A recording found on disk: a complete one, an attempt cut short (incomplete), a complete one
    replaced by a later run (superseded), or a folder that looks like a recording without a manifest."""

    folder: Path
    ep_id: str
    state: str
    submission: str  # the submission folder's name


def _looks_recorded(folder: Path) -> bool:
    return any((folder / name).exists() for name in (MANIFEST, ATTEMPT, "serialised_state", "event_logs",
                                                     GYMNASIUM_FILE))


def _classify(folder: Path, in_partial: bool) -> FoundEpisode:
    manifest = read_json(folder / MANIFEST)
    submission = (folder.parent.parent if in_partial else folder.parent).name
    if manifest is not None and "ep_id" in manifest:
        return FoundEpisode(folder, manifest["ep_id"], SUPERSEDED if in_partial else COMPLETE, submission)
    attempt = read_json(folder / ATTEMPT)
    if in_partial or attempt is not None:
        ep_id = (attempt or {}).get("ep_id") or folder.name.rsplit(".", 1)[0]
        return FoundEpisode(folder, ep_id, INCOMPLETE, submission)
    return FoundEpisode(folder, folder.name, UNKNOWN, submission)


def find_episodes(path: Path, depth: int = 3) -> Iterator[FoundEpisode]:
    """Every recording under `path`: a record dir, a submission's folder, or one episode's folder."""
    path = Path(path)
    if _looks_recorded(path):
        yield _classify(path, path.parent.name == PARTIAL)
        return
    if depth == 0 or not path.is_dir():
        return
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        if child.name == PARTIAL:
            for attempt in sorted(p for p in child.iterdir() if p.is_dir()):
                yield _classify(attempt, True)
        else:
            yield from find_episodes(child, depth - 1)
