"""Find the episodes of a test set in flatland's evaluator layout: ``Test_<N>/Level_<M>.pkl``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_ENV_FILE = re.compile(r"^Test_(\d+)/Level_(\d+)\.pkl$")


def parse_env_file(env_file: str) -> tuple[int, int] | None:
    """(N, M) of a ``Test_<N>/Level_<M>.pkl`` name (a path relative to the test set), else None."""
    match = _ENV_FILE.match(env_file)
    return (int(match.group(1)), int(match.group(2))) if match else None


class TestSetError(ValueError):
    """The test set is missing, empty or unreadable; the message is one line for the user."""


@dataclass(frozen=True)
class EnvFile:
    path: Path  # absolute
    env_file: str  # relative, e.g. Test_1/Level_0.pkl
    test: int
    level: int


def discover(directory: str | Path) -> list[EnvFile]:
    """Every env file of the test set, ordered by (test, level) numerically."""
    root = Path(directory).expanduser()
    if not root.exists():
        raise TestSetError(f"test set {root} does not exist")
    if not root.is_dir():
        raise TestSetError(f"test set {root} is not a directory")
    try:
        candidates = sorted(root.glob("*/*.pkl"))
    except OSError as exc:
        raise TestSetError(f"cannot read test set {root}: {exc}") from None
    found = []
    for path in candidates:
        rel = path.relative_to(root).as_posix()
        numbers = parse_env_file(rel)
        if numbers:
            found.append(EnvFile(path.resolve(), rel, *numbers))
    if not found:
        raise TestSetError(f"test set {root} holds no Test_<N>/Level_<M>.pkl files")
    unreadable = [f.env_file for f in found if not _readable(f.path)]
    if len(unreadable) == len(found):
        raise TestSetError(f"test set {root}: no env file is readable")
    found.sort(key=lambda f: (f.test, f.level))
    return found


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
        return True
    except OSError:
        return False
