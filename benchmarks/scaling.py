"""How evaluation cost grows with agents and grid size, and what NeurIPS 2020 Round 1 would take.

1. Generates the neurips2020-debug preset (NeurIPS 2020 Round 1's 14 test shapes, 5 to 400 agents,
   25x25 to 150x150, two levels each) or takes it from --test-set;
2. measures the floor per episode: load + reset, and stepping in-process with a do-nothing policy;
3. runs `flateval run` on it with 1 and with 2 workers (do-nothing agent): per-episode durations,
   evaluation wall time;
4. prints, per shape, the env's cost and flateval's overhead per step and per episode;
5. projects, from the 1-worker run's per-episode costs, the wall time with k workers (each worker
   takes the next queued episode when it is free, the queue in the broker's order: largest env
   file first), checks that projection against the real 2-worker run, and projects the 400-env
   Round 1 set (the 14 shapes in equal shares) for k = 1..64 workers.

    python benchmarks/scaling.py [--test-set DIR] [--max-test N]
"""

from __future__ import annotations

import argparse
import heapq
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # flatland-rl ships its own `benchmarks`
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flatland_baseline  # noqa: E402
from throughput import evaluation_wall_s  # noqa: E402

from env_worker.flatland_test_set import PRESETS, generate_test_set  # noqa: E402

ROUND1_ENVS = 400
WORKER_COUNTS = (1, 2, 4, 8, 16, 32, 64)


def makespan(costs: list[float], workers: int) -> float:
    """Wall time of running `costs` in queue order on `workers` that each take the next one when free."""
    free_at = [0.0] * workers
    for cost in costs:
        heapq.heappush(free_at, heapq.heappop(free_at) + cost)
    return max(free_at)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-set", type=Path, help="a generated neurips2020-debug set (default: generate it)")
    parser.add_argument("--max-test", type=int, default=13, help="only shapes 0..N (quicker)")
    args = parser.parse_args(argv)
    shapes = PRESETS["neurips2020-debug"][: args.max_test + 1]
    with tempfile.TemporaryDirectory() as scratch:
        test_set = args.test_set
        if test_set is None:
            test_set = Path(scratch) / "neurips2020-debug"
            print(f"generating {len(shapes)} shapes x 2 levels ...", flush=True)
            generate_test_set(test_set, shapes)
        elif args.max_test < 13:
            subset = Path(scratch) / "subset"
            for test in range(args.max_test + 1):
                (subset / f"Test_{test}").symlink_to(test_set / f"Test_{test}", target_is_directory=True) \
                    if subset.mkdir(exist_ok=True) is None else None
            test_set = subset
        print("floor: stepping every env in-process ...", flush=True)
        floor = {e["env_file"]: e for e in flatland_baseline.direct_step_seconds(test_set)["episodes"]}
        print("flateval run, 1 worker ...", flush=True)
        wall1, doc1 = evaluation_wall_s(test_set, 1)
        print("flateval run, 2 workers ...", flush=True)
        wall2, _ = evaluation_wall_s(test_set, 2)
        sizes = {f: (test_set / f).stat().st_size for f in floor}

    episodes = doc1["episodes"]
    by_file = {e["env_file"]: e for e in episodes}
    gap = (wall1 - sum(e["duration_s"] for e in episodes)) / len(episodes)  # RQ + bookkeeping between episodes
    cost = {e["env_file"]: e["duration_s"] + gap for e in episodes}

    by_test: dict[int, list[str]] = defaultdict(list)
    for env_file in floor:
        by_test[int(env_file.split("/")[0].removeprefix("Test_"))].append(env_file)
    print("\nper shape (means of its levels; do-nothing policy, so every episode runs to its step limit; "
          "round trip: the agent's mean per step; episode: the floor (load, reset, stepping in-process) "
          "and flateval's whole cost per episode in the 1-worker run):")
    print(f"{'test':>4} {'agents':>6} {'grid':>8} {'steps':>6} {'load+reset':>11} {'env/step':>9} "
          f"{'round trip':>11} {'episode: floor':>15} {'1 worker':>9}")
    for test, files in sorted(by_test.items()):
        f0 = floor[files[0]]
        steps = statistics.mean(floor[f]["steps"] for f in files)
        load = statistics.mean(floor[f]["load_s"] for f in files)
        env_step = statistics.mean(floor[f]["step_s"] / floor[f]["steps"] for f in files)
        round_trip = statistics.mean(by_file[f]["agent_response"]["mean_s"] for f in files)
        floor_s = statistics.mean(floor[f]["load_s"] + floor[f]["step_s"] for f in files)
        print(f"{test:>4} {f0['n_agents']:>6} {f0['width']:>3}x{f0['height']:<4} {steps:>6.0f} {1e3 * load:>9.1f}ms "
              f"{1e3 * env_step:>7.2f}ms {1e3 * round_trip:>9.3f}ms {floor_s:>14.2f}s "
              f"{statistics.mean(cost[f] for f in files):>8.2f}s")

    queue = sorted(cost, key=lambda f: -sizes[f])  # the broker's order: largest env file first
    predicted2 = makespan([cost[f] for f in queue], 2)
    print(f"\nthis set ({len(episodes)} episodes): 1 worker {wall1:.1f} s (real); "
          f"2 workers {wall2:.1f} s real vs {predicted2:.1f} s projected ({100 * (predicted2 / wall2 - 1):+.0f}%)")
    print("projected for more workers: " + ", ".join(
        f"{k}: {makespan([cost[f] for f in queue], k):.1f} s" for k in WORKER_COUNTS[2:]))

    per_shape = [statistics.mean(cost[f] for f in files) for _, files in sorted(by_test.items())]
    shares = [ROUND1_ENVS * (i + 1) // len(per_shape) - ROUND1_ENVS * i // len(per_shape) for i in range(len(per_shape))]
    round1 = sorted((c for c, n in zip(per_shape, shares) for _ in range(n)), reverse=True)
    print(f"\nNeurIPS 2020 Round 1 ({len(round1)} envs: {len(per_shape)} shapes, {min(shares)}-{max(shares)} each), "
          f"do-nothing agent, "
          f"projected from the per-episode costs above (a worker per core, an agent beside each):")
    for k in WORKER_COUNTS:
        span = makespan(round1, k)
        print(f"  {k:>3} workers: {span / 60:7.1f} min   (longest single episode {round1[0]:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
