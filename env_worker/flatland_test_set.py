"""Generate Flatland test sets in flatland-rl's evaluator layout (``Test_<N>/Level_<M>.pkl`` + metadata.csv),
or in the ECML 2026 challenge's (``level_<i>/level_<i>_scenario_<j>.pkl`` + metadata.csv as FAB's
definitions have it: a ``test_id`` column, one row per level)."""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from broker.test_set import ECML_LAYOUT, METADATA_FILE, NEURIPS_LAYOUT, env_file_name


@dataclass(frozen=True)
class TestConfig:
    """One test of a preset: every level of it shares these generator parameters."""

    n_agents: int
    x_dim: int
    y_dim: int
    n_cities: int
    max_rails_between_cities: int = 2
    max_rail_pairs_in_city: int = 2
    malfunction_interval: int = 0  # 0: no malfunctions
    levels: int = 2


# NeurIPS 2020 Round-1 shapes, growing test by test (two levels each: 28 debug episodes).
_NEURIPS2020 = [
    (5, 25, 25, 2), (10, 30, 30, 2), (20, 30, 30, 3), (50, 20, 35, 3), (80, 35, 25, 5), (80, 35, 35, 5),
    (80, 40, 60, 9), (80, 60, 40, 13), (80, 60, 60, 17), (100, 80, 120, 21), (100, 100, 80, 25),
    (200, 100, 100, 29), (200, 150, 150, 33), (400, 150, 150, 37),
]

PRESETS: dict[str, list[TestConfig]] = {
    "small": [TestConfig(2, 25, 25, 2, levels=2), TestConfig(3, 25, 25, 2, levels=2)],
    "medium": [TestConfig(5, 30, 30, 2, levels=3), TestConfig(7, 30, 30, 3, levels=3),
               TestConfig(10, 35, 35, 3, levels=2)],
    "neurips2020-debug": [TestConfig(a, x, y, c, malfunction_interval=250, levels=2) for a, x, y, c in _NEURIPS2020],
    # ECML 2026's levels in small: level_0 without malfunctions, then more trains, then breakdowns
    "ecml2026-debug": [TestConfig(3, 25, 25, 2, levels=2), TestConfig(4, 30, 30, 2, levels=2),
                       TestConfig(4, 30, 30, 2, malfunction_interval=60, levels=2)],
}
LAYOUTS = {"ecml2026-debug": ECML_LAYOUT}
"""The layout a preset is written in (default: flatland's evaluator's, ``Test_<N>/Level_<M>.pkl``)."""


def describe_preset(name: str) -> str:
    """What a preset makes, for `generate-test-set --help`: its episode count and shapes."""
    tests = PRESETS[name]
    trains = sorted({t.n_agents for t in tests})
    sides = sorted({max(t.x_dim, t.y_dim) for t in tests})
    malfunctions = " malfunctions on;" if any(t.malfunction_interval for t in tests) else ""
    layout = f" in {LAYOUTS[name]}" if name in LAYOUTS else ""
    return (f"{name}: {sum(t.levels for t in tests)} episodes ({len(tests)} tests;{malfunctions} "
            f"{trains[0]}-{trains[-1]} trains, grids up to {sides[-1]} cells a side){layout}")


METADATA_COLUMNS = ["test_id", "env_id", "n_agents", "x_dim", "y_dim", "n_cities", "max_rail_pairs_in_city",
                    "max_rails_between_cities", "malfunction_interval", "seed", "grid_mode",
                    "malfunction_duration_min", "malfunction_duration_max"]
"""Every column flatland's ``flatland-trajectory-generate-from-metadata`` reads: it regenerates each env
from its row with `env_generator`, exactly as `generate_test_set` made it."""
MALFUNCTION_DURATION = (20, 50)  # env_generator's defaults, written down for that command


def generate_test_set(
    out: str | Path,
    preset: str | Sequence[TestConfig] = "small",
    seed: int = 42,
    progress: Callable[[str], None] | None = None,
    layout: str | None = None,
) -> list[Path]:
    """Write every level of `preset` (a preset's name, or the tests themselves) under `out`, in
    `layout` (default: the preset's, else ``Test_<N>/Level_<M>.pkl``); return the env files written."""
    from flatland.env_generation.env_generator import env_generator
    from flatland.envs.persistence import RailEnvPersister

    if isinstance(preset, str) and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    configs = PRESETS[preset] if isinstance(preset, str) else list(preset)
    layout = layout or (LAYOUTS.get(preset, NEURIPS_LAYOUT) if isinstance(preset, str) else NEURIPS_LAYOUT)
    first = 1 if layout == ECML_LAYOUT else 0  # ECML 2026 counts its scenarios from 1
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows = []
    for test_id, config in enumerate(configs):
        for level in range(first, first + config.levels):
            level_seed = seed + 1000 * test_id + level
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                env, _, _ = env_generator(
                    n_agents=config.n_agents, x_dim=config.x_dim, y_dim=config.y_dim, n_cities=config.n_cities,
                    max_rail_pairs_in_city=config.max_rail_pairs_in_city,
                    max_rails_between_cities=config.max_rails_between_cities,
                    malfunction_interval=config.malfunction_interval, seed=level_seed, grid_mode=False,
                    malfunction_duration_min=MALFUNCTION_DURATION[0], malfunction_duration_max=MALFUNCTION_DURATION[1],
                    obs_builder_object=_dummy_builder(),
                )
                path = out / env_file_name(layout, test_id, level)
                path.parent.mkdir(parents=True, exist_ok=True)
                RailEnvPersister.save(env, str(path))
            written.append(path)
            rows.append([path.parent.name, path.stem, config.n_agents, config.x_dim, config.y_dim,
                         config.n_cities, config.max_rail_pairs_in_city, config.max_rails_between_cities,
                         config.malfunction_interval, level_seed, False, *MALFUNCTION_DURATION])
            if progress:
                progress(str(path.relative_to(out)))
    with open(out / METADATA_FILE, "w", newline="") as fh:
        writer = csv.writer(fh)
        if layout == ECML_LAYOUT:  # FAB's definitions (definitions/benchmarks/ecml2026/metadata.csv): the levels
            writer.writerow(["test_id"])
            writer.writerows([level] for level in dict.fromkeys(row[0] for row in rows))
        else:
            writer.writerow(METADATA_COLUMNS)
            writer.writerows(rows)
    return written


def _dummy_builder():
    from flatland.core.env_observation_builder import DummyObservationBuilder

    return DummyObservationBuilder()
