"""What an agent's fresh home starts with: the host's matplotlib font list, and nothing else.

flatland imports matplotlib (``flatland.envs.rail_env_shortest_paths`` imports pyplot), and a
matplotlib that finds no font list in its cache folder rebuilds it: it asks fontconfig for every
font and reads each one, 0.25 s of every agent start on this machine (1.40 s to the handshake of
the starter kit with a cache, 1.66-1.75 s without). An agent's home is empty at every start (its
files are its own, issue 22), so it paid that every time. The list holds font paths and names, the
same for every process of the machine; a copy is put in each fresh home (a matplotlib of another
version ignores it: its file name holds the format's version). It is found the way matplotlib finds
its cache, without importing matplotlib.
"""

from __future__ import annotations

import os
from pathlib import Path

from env_worker.sandbox.launcher import MAX_CARRIED_BYTES

FONT_LISTS = "fontlist-v*.json"


def host_matplotlib_cache() -> Path | None:
    """matplotlib's cache folder for this process: ``$MPLCONFIGDIR``, else ``$XDG_CACHE_HOME/matplotlib``,
    else ``~/.cache/matplotlib`` (matplotlib's own order on Linux)."""
    env = os.environ
    if env.get("MPLCONFIGDIR"):
        return Path(env["MPLCONFIGDIR"])
    cache = env.get("XDG_CACHE_HOME") or (os.path.join(env["HOME"], ".cache") if env.get("HOME") else None)
    return Path(cache, "matplotlib") if cache else None


def seed_files() -> list[tuple[Path, str]]:
    """(host file, path under the agent's home) for every font list to copy in (no larger than the
    launcher carries into the agent's disk)."""
    cache = host_matplotlib_cache()
    if cache is None:
        return []
    try:
        found = sorted(cache.glob(FONT_LISTS))
    except OSError:
        return []
    return [(path, f".cache/matplotlib/{path.name}") for path in found
            if path.is_file() and not path.is_symlink() and path.stat().st_size <= MAX_CARRIED_BYTES]


def seed_home(home: Path, uid: int | None) -> None:
    """Copy the seed files into `home` (a fresh, private folder), owned by the agent's `uid`."""
    for source, relative in seed_files():
        target = home / relative
        try:
            data = source.read_bytes()
            folder = home
            for part in Path(relative).parent.parts:
                folder = folder / part
                folder.mkdir(mode=0o700, exist_ok=True)
                if uid is not None:
                    os.chown(folder, uid, uid)
            target.write_bytes(data)
            target.chmod(0o600)
            if uid is not None:
                os.chown(target, uid, uid)
        except OSError:  # a cache that went away meanwhile: the agent builds its own
            continue
