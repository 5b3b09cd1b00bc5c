"""`flateval verify --test-set DIR`: re-play recorded scenarios from the test set's own scenario files.

flatland-benchmarks (FAB) re-checks a submission with flatland's `TrajectoryEvaluator` on the env it
unpickles from the submission-written ``serialised_state/<scenario_id>.pkl``, never compared with the
scenario it was given: a submission that writes an easier initial state (fewer trains, other
timetables, no malfunctions) and a trajectory consistent with it passes. Here every scenario is
re-played from the *reference* scenario file of the test set instead, made the way the challenge
makes its env (``RailEnvPersister.load_new`` with its rewards class, then its reset, or none:
ECML 2026 plays scenarios as saved), and an episode whose recorded initial state differs from the
reference is named, with the parts that differ (``agents``, ``grid``, ``np_random_state``, ...).

FAB's layout: ``<test_id>/<scenario_id>/event_logs/*.tsv`` and
``<test_id>/<scenario_id>/serialised_state/<scenario_id>.pkl``; each scenario id is matched to its
env file by FAB's scenario table (`core.fab_scenarios`: FAB's uuids), else to the test set's own ids
(`broker.test_set`: ``level_0_scenario_1``, ``Test_1_Level_0``). flateval's own recordings
(`env_worker.record_folder`) get the same initial-state check against the env file their manifest
names, before their usual verification.
"""

from __future__ import annotations

import contextlib
import enum
import io
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from broker.test_set import EnvFile
from core.challenge import Challenge

SERIALISED_STATE = "serialised_state"
EVENT_LOGS = "event_logs"
NOT_STATE = ("dev_pred_dict", "dev_obs_dict")  # the observation builder's caches: not the scenario


@dataclass(frozen=True)
class EnvRules:
    """How the challenge makes an episode's env from its scenario file."""

    rewards: str = "DefaultRewards"
    reset: bool = True
    seed: int = 1001

    @classmethod
    def of(cls, challenge: Challenge, phase: str | None = None) -> "EnvRules":
        from core.settings import DEFAULT_ENV_SEED

        return cls(challenge.phase(phase).scoring.rewards, challenge.reset,
                   challenge.seed if challenge.seed is not None else DEFAULT_ENV_SEED)


@dataclass(frozen=True)
class FabScenario:
    """One scenario folder of FAB's layout."""

    test_id: str
    scenario_id: str
    folder: Path

    @property
    def label(self) -> str:
        return f"{self.test_id}/{self.scenario_id}"


def is_fab_layout(root: Path) -> bool:
    """Whether `root` holds FAB's ``<test_id>/<scenario_id>/serialised_state/<scenario_id>.pkl``."""
    return bool(fab_scenarios(root))


def fab_scenarios(root: Path) -> list[FabScenario]:
    """Every scenario folder under `root` (FAB's data dir of one submission), in name order; flateval's
    own recordings (``<submission>/<ep_id>/`` with a manifest) are not FAB's."""
    from env_worker.record_folder import MANIFEST

    found = []
    for state in sorted(Path(root).glob(f"*/*/{SERIALISED_STATE}/*.pkl")):
        folder = state.parent.parent
        if state.stem == folder.name and (folder / EVENT_LOGS).is_dir() and not (folder / MANIFEST).exists():
            found.append(FabScenario(folder.parent.name, folder.name, folder))
    return found


def reference_of(scenario_id: str, test_id: str | None, env_files: list[EnvFile],
                 table: Mapping[str, str] | None = None) -> EnvFile | None:
    """The test set's scenario with this id: the env file FAB's scenario table names for it (its uuid,
    `core.fab_scenarios`), else the test set's own scenario id (and test id, when its folder is so named)."""
    if table and scenario_id in table:
        return next((f for f in env_files if f.env_file == table[scenario_id]), None)
    matches = [f for f in env_files if f.scenario_id == scenario_id]
    same_test = [f for f in matches if f.test_id == test_id]
    return (same_test or matches or [None])[0]


def load_env(path: Path, rules: EnvRules, reset: bool | None = None) -> Any:
    """The env of a scenario file (or of a recorded state, `reset=False`) as the challenge makes it."""
    from flatland.envs import rewards as flatland_rewards
    from flatland.envs.persistence import RailEnvPersister

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        env, _ = RailEnvPersister.load_new(str(path), rewards=getattr(flatland_rewards, rules.rewards)())
        if rules.reset if reset is None else reset:
            env.reset(regenerate_rail=True, regenerate_schedule=True, random_seed=rules.seed)
    return env


def state_of(env: Any) -> dict[str, Any]:
    """The env's full state (flatland's `get_full_state`), as plain comparable values."""
    from flatland.envs.persistence import RailEnvPersister

    return {k: _plain(v) for k, v in RailEnvPersister.get_full_state(env).items() if k not in NOT_STATE}


def initial_state_differences(recorded: Path, reference: Path, rules: EnvRules) -> list[str]:
    """The parts of the recorded initial state that differ from the reference scenario's (none: same)."""
    ours, theirs = state_of(load_env(reference, rules)), state_of(load_env(recorded, rules, reset=False))
    return sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))


def _plain(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "__dict__"):
        return [type(value).__name__, _plain(vars(value))]
    return repr(value)


def differs_line(parts: list[str], reference: EnvFile) -> str:
    return (f"its recorded initial state differs from the test set's {reference.env_file} "
            f"({', '.join(parts)})")


@contextlib.contextmanager
def replayed_from_reference(scenario: FabScenario, reference: EnvFile, rules: EnvRules):
    """A copy of the scenario's trajectory whose serialised state is the reference scenario's env (as
    the challenge makes it): what flatland's `TrajectoryEvaluator` then replays is the scenario the
    test set holds, with the submission's recorded actions, positions, rewards and dones."""
    from flatland.envs.persistence import RailEnvPersister

    with tempfile.TemporaryDirectory(prefix="flateval-reference-") as tmp:
        folder = Path(tmp) / scenario.scenario_id
        shutil.copytree(scenario.folder / EVENT_LOGS, folder / EVENT_LOGS)
        (folder / SERIALISED_STATE).mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            RailEnvPersister.save(load_env(reference.path, rules), str(folder / SERIALISED_STATE /
                                                                         f"{scenario.scenario_id}.pkl"))
        yield folder


def recorded_steps(folder: Path, ep_id: str) -> int:
    """The steps a trajectory records (its last env_time)."""
    from flatland.trajectories.trajectories import Trajectory

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        frame = Trajectory.load_existing(data_dir=folder, ep_id=ep_id).trains_rewards_dones_infos
    return int(frame["env_time"].max()) if len(frame) else 0
