"""`flateval run`'s folder (its embedded Redis, the workers' and agents' logs, the metrics), and
reaping the folders of runs that were killed before they could remove their own.

Each folder holds `OWNER_FILE`: the pid and start time of the `flateval run` that made it. A run
SIGKILLed leaves its folder and its embedded redis-server (its workers and agents die with it);
the next `flateval run` stops that server and removes the folder, but only where the owner is
provably dead: its pid gone, or held by a process that started at another time. A folder without
an owner file, or whose owner runs, is never touched: other runs on the machine are their own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from broker.embedded_redis import stop_orphan
from core.process_identity import ProcessIdentity

PREFIX = "flateval-run-"
OWNER_FILE = "owner"
REDIS_DIR = "redis"


def make_run_dir() -> Path:
    """A fresh private folder for this run, its owner written first."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX))
    identity = ProcessIdentity.of(os.getpid())
    if identity is not None:
        identity.write(path / OWNER_FILE)
    return path


def reap_dead_runs(parent: Path | None = None) -> list[Path]:
    """Stop the embedded Redis of every run folder in `parent` (default: the temporary directory)
    whose owner is dead, and remove the folder. Returns the folders removed."""
    parent = Path(parent or tempfile.gettempdir())
    me = os.geteuid()
    reaped = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(PREFIX)]
    except OSError:
        return reaped
    for folder in candidates:
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != me:
                continue
        except OSError:
            continue
        owner = ProcessIdentity.read(folder / OWNER_FILE)
        if owner is None or not owner.gone():
            continue
        stop_orphan(folder / REDIS_DIR)
        shutil.rmtree(folder, ignore_errors=True)
        reaped.append(folder)
    return reaped
