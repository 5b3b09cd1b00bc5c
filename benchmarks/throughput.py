"""Episodes per second of `flateval run` with 1 and 2 worker+agent pairs (do-nothing agent).

Wall time is the results document's `timing.wall_s` (first episode enqueued to last result stored),
so process start-up is excluded. Rounds alternate 1 and 2 workers; medians are printed.

    python benchmarks/throughput.py [--test-set DIR] [--preset medium] [--rounds 3] [--workers 1 2]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # flatland-rl ships its own `benchmarks`
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_test_set import parser_with_test_set, test_set_for  # noqa: E402

from core.settings import RunSettings  # noqa: E402
from flateval.local_run import run_local  # noqa: E402
from flateval.planning import plan_run  # noqa: E402

DO_NOTHING = f"{sys.executable} -m agent_bridge.examples.do_nothing"


def evaluation_wall_s(test_set: Path, workers: int, agent: str = DO_NOTHING) -> tuple[float, dict]:
    """`timing.wall_s` of one `flateval run` (start-up excluded), and its results document."""
    document = run_local(RunSettings(agent_command=agent, test_set=str(test_set), workers=workers),
                         plan_run(test_set=str(test_set)))
    if document["status"] != "finished":
        raise RuntimeError(f"run ended {document['status']}: {document.get('error')}")
    return document["timing"]["wall_s"], document


def main(argv: list[str] | None = None) -> int:
    parser = parser_with_test_set(__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    with test_set_for(args) as test_set:
        walls: dict[int, list[float]] = {w: [] for w in args.workers}
        for _ in range(args.rounds):
            for workers in args.workers:
                wall, document = evaluation_wall_s(test_set, workers)
                walls[workers].append(wall)
        episodes, steps = len(document["episodes"]), document["score"]["steps"]
    print(f"test set: {test_set} ({episodes} episodes, {steps} steps), rounds: {args.rounds}")
    base = statistics.median(walls[args.workers[0]])
    for workers in args.workers:
        wall = statistics.median(walls[workers])
        print(f"{workers} worker(s): {episodes / wall:7.2f} episodes/s  {steps / wall:8.0f} steps/s  "
              f"wall {wall:6.2f} s  x{base / wall:.2f} the throughput of {args.workers[0]} worker(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
