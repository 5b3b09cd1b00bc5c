"""Scheduling cost per episode, and `flateval run` start-up to its first episode.

Runs ``flateval run --workers 1`` (a real CLI process, embedded Redis, real worker and agent) with
a do-nothing agent that stamps the wall clock when each episode's first observation reaches it and
when its ``episode_end`` does (benchmarks/stamp_agent.py). From those stamps:

* start-up: from launching the ``flateval run`` process to the first episode's first observation;
* between episodes: from one episode's ``episode_end`` reaching the agent to the next episode's
  first observation reaching it: storing the result, RQ finishing that job and taking the next one,
  the job's prologue, loading and resetting the env, the handshake and the ``episode_start`` message;
* scheduling cost: that, minus loading and resetting the env (measured in-process for the same
  file): what the evaluator itself spends from taking a job to sending the first observation.

    python benchmarks/scheduling.py [--test-set DIR] [--rounds 3]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # flatland-rl ships its own `benchmarks`
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_test_set import parser_with_test_set, test_set_for  # noqa: E402

from env_worker.flatland_env import FlatlandEnv, warm_up  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
AGENT = f"{sys.executable} {ROOT / 'benchmarks' / 'stamp_agent.py'}"
SEED = 1001


def load_reset_s(path: Path, repeats: int = 3) -> float:
    """Median time to load and reset one env as the worker does (the env's own cost)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        env = FlatlandEnv(path, SEED)
        env.use_observation(None)
        env.reset()
        times.append(time.perf_counter() - started)
        env.release()
    return statistics.median(times)


def one_run(test_set: Path, scratch: Path) -> tuple[float, list[tuple[str, float]]]:
    """(start-up s, [(env_file, gap s)]) of one `flateval run --workers 1`."""
    stamps = scratch / f"stamps-{time.monotonic_ns()}.txt"
    env = {**os.environ, "STAMP_FILE": str(stamps), "PYTHONPATH": str(ROOT)}
    launched = time.time()
    subprocess.run([sys.executable, "-m", "flateval", "run", "--agent", AGENT, "--test-set", str(test_set),
                    "--workers", "1", "--output", str(scratch / "results.json")],
                   env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=600)
    lines = [line.split() for line in stamps.read_text().splitlines()]
    starts = [(float(t), f) for kind, t, *f in lines if kind == "start" for f in [f[0]]]
    ends = [float(t) for kind, t, *_ in lines if kind == "end"]
    gaps = [(env_file, start - end) for (start, env_file), end in zip(starts[1:], ends)]
    return starts[0][0] - launched, gaps


def main(argv: list[str] | None = None) -> int:
    args = parser_with_test_set(__doc__).parse_args(argv)
    warm_up()
    with test_set_for(args) as test_set, tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        startups, gaps = [], []
        for _ in range(args.rounds):
            startup, run_gaps = one_run(test_set, scratch)
            startups.append(startup)
            gaps += run_gaps
        env_cost = {f: load_reset_s(test_set / f) for f in {f for f, _ in gaps}}
    between = [gap for _, gap in gaps]
    own = [gap - env_cost[f] for f, gap in gaps]
    print(f"test set: {test_set}, rounds: {args.rounds}, episodes measured: {len(gaps)}")
    print(f"start-up, `flateval run` launched -> first observation at the agent: "
          f"median {statistics.median(startups):.2f} s, max {max(startups):.2f} s   (target < 3 s)")
    print(f"between episodes (episode_end -> next first observation): median {1e3 * statistics.median(between):.1f} ms, "
          f"max {1e3 * max(between):.1f} ms")
    print(f"  of which loading + resetting the env: median {1e3 * statistics.median(env_cost.values()):.1f} ms")
    print(f"scheduling cost (job taken -> first observation sent, env load excluded): "
          f"median {1e3 * statistics.median(own):.1f} ms, max {1e3 * max(own):.1f} ms   (target < 20 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
