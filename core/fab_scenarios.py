"""FAB's tests and scenarios: which env file each scenario of a flatland-benchmarks benchmark plays.

FAB's orchestrator holds this as two tables in its code (``TEST_TO_SCENARIO_IDS`` and
``load_scenario_data``); flateval holds them as data, one JSON file per benchmark::

    {"benchmark_id": "<uuid>", "source": "<where the tables were read>",
     "tests": {"<test id>": {"<scenario id>": "level_0/level_0_scenario_1.pkl", ...}, ...}}

in FAB's order (tests, and scenarios within a test). ``ecml2026`` is bundled (read from FAB's
orchestrator; see its ``source``); a host gives its own file for any other benchmark.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

BUNDLED = Path(__file__).resolve().parent / "challenges"
SUFFIX = ".fab.json"


class FabScenariosError(ValueError):
    """A scenario table that cannot be read, or a test it does not know; one line."""


@dataclass(frozen=True)
class FabScenario:
    test_id: str
    scenario_id: str
    env_file: str  # relative to the test set, e.g. level_0/level_0_scenario_1.pkl
    test_index: int  # the test's place among the tests evaluated (FAB evaluates them in that order)


@dataclass(frozen=True)
class FabScenarios:
    benchmark_id: str
    tests: dict[str, dict[str, str]]
    source: str = ""

    def for_tests(self, test_ids: Iterable[str]) -> list[FabScenario]:
        """The scenarios of `test_ids`, test after test, in FAB's order."""
        chosen = []
        for index, test_id in enumerate(test_ids):
            if test_id not in self.tests:
                raise FabScenariosError(f"test {test_id} is not a test of benchmark {self.benchmark_id}")
            chosen += [FabScenario(test_id, scenario_id, env_file, index)
                       for scenario_id, env_file in self.tests[test_id].items()]
        return chosen


def load_fab_scenarios(name_or_path: str) -> FabScenarios:
    """A bundled table (``ecml2026``) or a JSON file of that form."""
    path = Path(name_or_path)
    if not path.suffix and (BUNDLED / f"{name_or_path}{SUFFIX}").exists():
        path = BUNDLED / f"{name_or_path}{SUFFIX}"
    try:
        data = json.loads(path.read_text())
        tests = {str(t): {str(s): str(f) for s, f in scenarios.items()} for t, scenarios in data["tests"].items()}
        for test_id, scenarios in tests.items():
            for an_id in (test_id, *scenarios):
                uuid.UUID(an_id)
        for env_file in (f for scenarios in tests.values() for f in scenarios.values()):
            if Path(env_file).is_absolute() or ".." in Path(env_file).parts:
                raise ValueError(f"env file {env_file!r} must be relative to the test set")
        return FabScenarios(str(data["benchmark_id"]), tests, str(data.get("source", "")))
    except FileNotFoundError:
        bundled = ", ".join(sorted(p.name.removesuffix(SUFFIX) for p in BUNDLED.glob(f"*{SUFFIX}")))
        raise FabScenariosError(f"no scenario table {name_or_path} (a JSON file, or bundled: {bundled})") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FabScenariosError(f"{path}: not a FAB scenario table: {type(exc).__name__}: {exc}") from None
