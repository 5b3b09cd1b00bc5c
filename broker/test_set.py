"""Find the episodes of a test set, in either of flatland's layouts:

* flatland's evaluator (NeurIPS 2020, flatland 3 benchmarks): ``Test_<N>/Level_<M>.pkl``;
* the ECML 2026 challenge (flatland-benchmarks' scenarios): ``level_<i>/level_<i>_scenario_<j>.pkl``.

Each env file has FAB's ids: its test id is its folder (``Test_1``, ``level_0``), its scenario id the
episode's id (`core.episode_spec.ep_id_of`: ``Test_1_Level_0``, ``level_0_scenario_1``).

A ``metadata.csv`` beside the folders (flatland's: ``test_id`` and ``env_id`` columns, one row per
env file; or FAB's ECML 2026 definitions: a ``test_id`` column, one row per test) is checked against
the files (`metadata_warnings`): a row naming a missing file or test, or an env file without its row
(flatland's evaluator fails on it mid-run), is said before anything starts; the files are played.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from core.episode_spec import ep_id_of

NEURIPS_LAYOUT = "Test_<N>/Level_<M>.pkl"
ECML_LAYOUT = "level_<i>/level_<i>_scenario_<j>.pkl"
_LAYOUTS = {
    NEURIPS_LAYOUT: re.compile(r"^Test_(\d+)/Level_(\d+)\.pkl$"),
    ECML_LAYOUT: re.compile(r"^level_(\d+)/level_(\d+)_scenario_(\d+)\.pkl$"),
}
METADATA_FILE = "metadata.csv"


def env_file_name(layout: str, test: int, level: int) -> str:
    """The env file of a test's level in `layout`: (1, 0) -> ``Test_1/Level_0.pkl``; in ECML 2026's,
    (0, 1) -> ``level_0/level_0_scenario_1.pkl`` (its scenarios count from 1)."""
    if layout == ECML_LAYOUT:
        return f"level_{test}/level_{test}_scenario_{level}.pkl"
    return f"Test_{test}/Level_{level}.pkl"


def parse_env_file(env_file: str) -> tuple[int, int] | None:
    """(test, level) of an env file's name (a path relative to the test set), else None:
    ``Test_<N>/Level_<M>.pkl`` -> (N, M); ``level_<i>/level_<i>_scenario_<j>.pkl`` -> (i, j)."""
    found = _match(env_file)
    return found[1] if found else None


def _match(env_file: str) -> tuple[str, tuple[int, int]] | None:
    for layout, pattern in _LAYOUTS.items():
        match = pattern.match(env_file)
        if match is None:
            continue
        numbers = [int(g) for g in match.groups()]
        if layout == ECML_LAYOUT:
            if numbers[0] != numbers[1]:
                return None  # level_1/level_2_scenario_1.pkl: another level's scenario in the wrong folder
            numbers = [numbers[0], numbers[2]]
        return layout, (numbers[0], numbers[1])
    return None


class TestSetError(ValueError):
    """The test set is missing, empty or unreadable; the message is one line for the user."""


@dataclass(frozen=True)
class EnvFile:
    path: Path  # absolute
    env_file: str  # relative, e.g. Test_1/Level_0.pkl or level_0/level_0_scenario_1.pkl
    test: int
    level: int  # the level's number (ECML 2026: the scenario's)
    test_id: str = ""  # FAB's test id: the folder, Test_1 or level_0
    scenario_id: str = ""  # FAB's scenario id: the episode's id, Test_1_Level_0 or level_0_scenario_1


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
    found, layouts = [], set()
    for path in candidates:
        rel = path.relative_to(root).as_posix()
        matched = _match(rel)
        if matched:
            layouts.add(matched[0])
            found.append(EnvFile(path.resolve(), rel, *matched[1], test_id=rel.split("/")[0],
                                 scenario_id=ep_id_of(rel)))
    if not found:
        raise TestSetError(f"test set {root} holds no {NEURIPS_LAYOUT} or {ECML_LAYOUT} files")
    if len(layouts) > 1:
        raise TestSetError(f"test set {root} mixes {NEURIPS_LAYOUT} and {ECML_LAYOUT} files: keep one layout")
    unreadable = [f.env_file for f in found if not _readable(f.path)]
    if len(unreadable) == len(found):
        raise TestSetError(f"test set {root}: no env file is readable")
    found.sort(key=lambda f: (f.test, f.level))
    return found


def read_metadata(root: str | Path) -> list[dict[str, str]]:
    """The rows of the test set's metadata.csv ([]: there is none); `TestSetError` if it cannot be read
    or has no ``test_id`` column."""
    path = Path(root).expanduser() / METADATA_FILE
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TestSetError(f"cannot read {path}: {exc}") from None
    if rows and "test_id" not in rows[0]:
        raise TestSetError(f"{path} has no test_id column (flatland's metadata.csv names each env's test_id)")
    return rows


def metadata_warnings(root: str | Path, found: list[EnvFile]) -> tuple[str, ...]:
    """Where the test set's metadata.csv and its files disagree, one line each (at most one of a kind)."""
    path = Path(root).expanduser() / METADATA_FILE
    try:
        rows = read_metadata(root)
    except TestSetError as exc:
        return (f"{exc}: ignored",)
    if not rows:
        return ()
    files, tests = {f.env_file for f in found}, {f.test_id for f in found}
    if "env_id" not in rows[0]:  # FAB's ECML 2026 definitions: the tests only
        missing = sorted({r["test_id"] for r in rows} - tests)
        return (f"{path} names test {missing[0]}, which the test set does not have",) if missing else ()
    named = {f"{r['test_id']}/{r['env_id']}.pkl" for r in rows}
    said = []
    if named - files:
        said.append(f"{path} names {sorted(named - files)[0]}, which the test set does not have")
    if files - named:
        said.append(f"{path} does not list {sorted(files - named)[0]} (flatland's evaluator would fail on it): "
                    "playing it")
    return tuple(said)


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
        return True
    except OSError:
        return False
