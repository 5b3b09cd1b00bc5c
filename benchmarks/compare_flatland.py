"""Evaluation wall time: flateval (1 and 2 workers) against flatland-rl's own evaluator.

Same generated test set, same do-nothing policy, rounds interleaved, medians printed. flateval's
time is `timing.wall_s` (first episode enqueued to last result stored); flatland's is its client's
first env_create to its last step (both exclude process start-up).

    python benchmarks/compare_flatland.py [--test-set DIR] [--preset medium] [--rounds 3]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # flatland-rl ships its own `benchmarks`
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flatland_baseline  # noqa: E402
from bench_test_set import parser_with_test_set, test_set_for  # noqa: E402
from throughput import evaluation_wall_s  # noqa: E402



def main(argv: list[str] | None = None) -> int:
    args = parser_with_test_set(__doc__).parse_args(argv)
    walls: dict[str, list[float]] = {"flatland": [], "flateval-1": [], "flateval-2": []}
    with test_set_for(args) as test_set:
        for _ in range(args.rounds):
            walls["flatland"].append(
                flatland_baseline.run_flatland_evaluator(test_set, flatland_baseline.free_port())["wall_s"])
            for workers in (1, 2):
                wall, document = evaluation_wall_s(test_set, workers)
                walls[f"flateval-{workers}"].append(wall)
    median = {name: statistics.median(values) for name, values in walls.items()}
    print(f"test set: {test_set} ({len(document['episodes'])} episodes, {document['score']['steps']} steps), "
          f"rounds: {args.rounds}, do-nothing agent")
    for name, value in median.items():
        ratio = value / median["flatland"]
        print(f"{name:<12} evaluation wall time {value:7.3f} s   {ratio:5.2f} x flatland's")
    print("targets: flateval-1 <= 0.60 x, flateval-2 <= 0.40 x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
