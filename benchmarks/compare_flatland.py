"""Evaluation wall time: flateval (1 and 2 workers) against flatland-rl's own evaluator.

Two workloads, on the same generated test set, rounds interleaved, medians printed:

* ``do-nothing``: a do-nothing policy. flateval's time is `timing.wall_s` (first episode enqueued to
  last result stored); flatland's is its client's first env_create to its last step (both exclude
  process start-up).
* ``tree-script``: a participant's FlatlandRemoteClient script (tests/flatland_submissions/
  remote_client_tree.py: tree observations of depth 2, a small heuristic), unchanged, run by
  ``flateval run --agent "python -m agent_bridge.flatland_remote SCRIPT"`` and by flatland's service
  + client. Here the participant's own work (observations, inference) dominates, so what counts is
  the whole command's wall time, start-up included, and how much of the agent's work overlaps the
  evaluator's.
* ``torch-kit``: the same, with the workload most real submissions brought: a replica of the NeurIPS
  2020 starter kit's run.py (benchmarks/starter_kit_run.py: its own tree observations, normalized as
  the kit does, a DDDQN evaluated with torch per agent per step; needs ``pip install flateval[bench]``),
  with torch's default threads, as participants ran it. Each round also measures the workload's floor
  (benchmarks/starter_kit_floor.py: the kit's own work with no evaluator, 1 thread, in one process
  and in two at once): no evaluator can do better than `floor-1` with one worker, nor than
  `floor-2` with two on 2 cores.

With ``--background-load N``, N processes that only spin run beside every command, at the same
priority: the busy machine the issue measured on (others' jobs sharing the cores), made repeatable.
A thread pool sized to every core then waits at each barrier for a core that a spinner holds.

    python benchmarks/compare_flatland.py [--workload do-nothing tree-script torch-kit] [--preset medium] [--rounds 3]
        [--background-load N]
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # flatland-rl ships its own `benchmarks`
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flatland_baseline  # noqa: E402
from core.cpu_share import thread_variables  # noqa: E402
from bench_test_set import parser_with_test_set, test_set_for  # noqa: E402
from throughput import evaluation_wall_s  # noqa: E402

HERE = Path(__file__).resolve().parent
SCRIPTS = {"tree-script": HERE.parent / "tests" / "flatland_submissions" / "remote_client_tree.py",
           "torch-kit": HERE / "starter_kit_run.py"}
TARGETS = {"do-nothing": {1: 0.60, 2: 0.40}, "tree-script": {1: 0.90, 2: 0.55}, "torch-kit": {1: 0.90, 2: 0.55}}


def do_nothing_round(test_set: Path) -> dict[str, float]:
    walls = {"flatland": flatland_baseline.run_flatland_evaluator(test_set, flatland_baseline.free_port())["wall_s"]}
    for workers in (1, 2):
        walls[f"flateval-{workers}"] = evaluation_wall_s(test_set, workers)[0]
    return walls


def script_round(script: Path, test_set: Path) -> dict[str, float]:
    """Whole-command walls of the same script under flatland's evaluator and `flateval run`."""
    flatland = flatland_baseline.run_flatland_script(test_set, [str(script)], flatland_baseline.free_port())
    if flatland["returncode"] != 0:
        raise RuntimeError(f"the script failed under flatland's evaluator:\n{flatland['output'][-2000:]}")
    walls = {"flatland": flatland["wall_s"]}
    for workers in (1, 2):
        walls[f"flateval-{workers}"] = flateval_command_wall_s(script, test_set, workers)
    if script == SCRIPTS["torch-kit"]:
        walls.update(kit_floor(test_set))
    return walls


def kit_floor(test_set: Path) -> dict[str, float]:
    """The torch-kit's floors with 1 and 2 workers (benchmarks/starter_kit_floor.py): one process,
    then two at once, one per core; one thread each."""
    floors = {}
    for pairs in (1, 2):
        done = subprocess.run([sys.executable, str(HERE / "starter_kit_floor.py"), str(test_set), "--pairs", str(pairs)],
                              capture_output=True, text=True, env={**os.environ, **thread_variables(1)})
        if done.returncode != 0:
            raise RuntimeError(f"the floor failed: {done.stderr[-2000:]}")
        floors[f"floor-{pairs}"] = json.loads(done.stdout.splitlines()[-1])[f"floor_{pairs}_s"]
    return floors


def flateval_command_wall_s(script: Path, test_set: Path, workers: int) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "results.json"
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "flateval", "run", "--agent",
                               f"{sys.executable} -m agent_bridge.flatland_remote {script}", "--test-set",
                               str(test_set), "--workers", str(workers), "--output", str(out)],
                              capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0 or json.loads(out.read_text())["status"] != "finished":
            raise RuntimeError(f"flateval run failed: {done.stderr[-2000:]}")
    return wall


@contextlib.contextmanager
def background_load(spinners: int):
    """`spinners` processes burning a core each, stopped by pid when the block ends."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(spinners)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def main(argv: list[str] | None = None) -> int:
    parser = parser_with_test_set(__doc__)
    parser.add_argument("--workload", nargs="+", choices=sorted(TARGETS), default=sorted(TARGETS))
    parser.add_argument("--background-load", type=int, default=0, metavar="N",
                        help="N spinning processes beside every command (a busy machine); default 0")
    args = parser.parse_args(argv)
    rounds = {"do-nothing": do_nothing_round, **{name: functools.partial(script_round, script)
                                                 for name, script in SCRIPTS.items()}}
    with test_set_for(args) as test_set, background_load(args.background_load):
        episodes = len(flatland_baseline.env_files(test_set))
        walls = {workload: {} for workload in args.workload}
        for _ in range(args.rounds):
            for workload in args.workload:
                for name, wall in rounds[workload](test_set).items():
                    walls[workload].setdefault(name, []).append(wall)
    print(f"test set: {test_set} ({episodes} episodes), rounds: {args.rounds}, interleaved, "
          f"background load: {args.background_load} spinning process{'' if args.background_load == 1 else 'es'}")
    for workload, by_name in walls.items():
        median = {name: statistics.median(values) for name, values in by_name.items()}
        print(f"\n{workload}:")
        for name, value in median.items():
            print(f"  {name:<12} wall {value:7.3f} s   {value / median['flatland']:5.2f} x flatland's")
        for workers in (1, 2):
            name = f"flateval-{workers}"
            per_round = " ".join(f"{mine / theirs:.2f}" for mine, theirs in zip(by_name[name], by_name["flatland"]))
            print(f"  {name} x flatland's, round by round: {per_round}")
            if f"floor-{workers}" in median:
                print(f"  {name} x its floor: {median[name] / median[f'floor-{workers}']:.2f}")
        targets = ", ".join(f"flateval-{w} <= {t:.2f} x" for w, t in TARGETS[workload].items())
        print(f"  targets: {targets}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
