"""Per-step overhead of flateval's episode runner over stepping the env directly, beside flatland's.

Same envs, same run, interleaved rounds, medians. A do-nothing agent, no observations, loopback TCP:

* floor     - every env loaded and reset as flatland's evaluator does, stepped in-process with {};
* flateval  - `run_episode` against a real agent process over ZeroMQ; the step loop is timed from
              the first actions received to the episode's end (load, reset, handshake excluded);
* flatland  - FlatlandRemoteEvaluationService + FlatlandRemoteClient on a real Redis; its step
              phase is its wall time minus its env_create round trips.

overhead per step = (step-phase time - floor stepping time) / steps.

    python benchmarks/episode_overhead.py [--test-set DIR] [--rounds 3] [--spin-us 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # flatland-rl ships its own `benchmarks`
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flatland_baseline  # noqa: E402

from flateval.local_cluster import agent_spin_env  # noqa: E402
from env_worker.agent_link import AgentLink  # noqa: E402
from env_worker.agent_process import AgentProcess  # noqa: E402
from env_worker.episode import run_episode  # noqa: E402
from env_worker.flatland_test_set import generate_test_set  # noqa: E402
from env_worker.metrics import MetricsObserver  # noqa: E402
from env_worker.observers import EpisodeObserver  # noqa: E402
from core.episode_spec import EpisodeSpec  # noqa: E402


class LoopTimer(EpisodeObserver):
    """Times the step loop (from the first actions, the end of planning, to the episode's end) and
    keeps every step's agent round trip (message sent -> reply received)."""

    def __init__(self) -> None:
        self.loop_s = 0.0
        self._start = 0.0
        self.round_trips: list[float] = []
        self.env_s = 0.0  # time inside the env adapter's step (flatland's step + wire conversion)

    def env_stepped(self, seconds: float, actions: object, outcome: object) -> None:
        self.env_s += seconds

    def agent_replied(self, seconds: float, phase: str) -> None:
        if phase == "planning":
            self._start = time.perf_counter()
        else:
            self.round_trips.append(seconds)

    def episode_ended(self, result) -> None:
        self.loop_s += time.perf_counter() - self._start


def metrics_cost_per_step_s(steps: int = 200_000) -> float:
    """What the Prometheus observer adds to one step (its two per-step hooks), measured directly:
    far below what an end-to-end difference could resolve on a busy 2-core machine."""
    observer = MetricsObserver()
    started = time.perf_counter()
    for _ in range(steps):
        observer.env_stepped(0.0002, None, None)
        observer.agent_replied(0.00005, "step")
    return (time.perf_counter() - started) / steps


def flateval_step_phase(test_set: Path, link: AgentLink) -> dict:
    timer = LoopTimer()
    observers = [timer]
    steps = 0
    for env_file in flatland_baseline.env_files(test_set):
        result = run_episode(EpisodeSpec(env_path=str(test_set / env_file), env_file=env_file), link, observers)
        if result.outcome != "completed":
            raise RuntimeError(f"{env_file}: {result.outcome}: {result.error}")
        steps += result.steps
    return {"loop_s": timer.loop_s, "steps": steps, "round_trips": timer.round_trips}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-set", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--spin-us", type=float, default=None, help="env-side spin (default: AgentLink's)")
    parser.add_argument("--skip-flatland", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        test_set = args.test_set
        if test_set is None:
            test_set = Path(scratch) / "medium"
            generate_test_set(test_set, "medium")
        os.environ.update(agent_spin_env(workers=1))  # as `flateval run --workers 1` starts its agent
        agent = AgentProcess(f"{sys.executable} -m agent_bridge.examples.do_nothing", Path(scratch) / "agent.log")
        agent.start()
        link = AgentLink(agent.endpoint) if args.spin_us is None else AgentLink(agent.endpoint,
                                                                                spin_s=args.spin_us / 1e6)
        rows, round_trips = [], []
        try:
            flateval_step_phase(test_set, link)  # warm-up: imports, caches
            for _ in range(args.rounds):
                floor = flatland_baseline.direct_step_seconds(test_set)
                ours = flateval_step_phase(test_set, link)
                assert ours["steps"] == floor["steps"]
                round_trips += ours["round_trips"]
                row = {"floor_ms": floor["per_step_s"] * 1e3,
                       "flateval_ms": (ours["loop_s"] - floor["step_s"]) / floor["steps"] * 1e3,
                       "metrics_ms": metrics_cost_per_step_s() * 1e3}
                if not args.skip_flatland:
                    theirs = flatland_baseline.run_flatland_evaluator(test_set, flatland_baseline.free_port())
                    row["flatland_ms"] = (theirs["wall_s"] - theirs["create_s"] - floor["step_s"]) / floor["steps"] * 1e3
                    row["flatland_wall_ms"] = (theirs["wall_s"] - floor["step_s"]) / floor["steps"] * 1e3
                rows.append(row)
        finally:
            link.close()
            agent.stop()

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(f"test set: {test_set}  steps per round: {floor['steps']}  rounds: {args.rounds}")
    print(f"env step (floor)                      {median('floor_ms'):.3f} ms/step")
    print(f"flateval overhead over the floor      {median('flateval_ms'):.3f} ms/step   (target < 0.100)")
    round_trips.sort()
    print(f"agent round trip, do-nothing agent     p50 {1e3 * round_trips[len(round_trips) // 2]:.3f} ms, "
          f"p99 {1e3 * round_trips[int(len(round_trips) * 0.99)]:.3f} ms over {len(round_trips)} steps   (target p99 < 0.5)")
    print(f"  + Prometheus metrics observer       {median('metrics_ms') * 1e3:.2f} us/step (measured directly)")
    if not args.skip_flatland:
        print(f"flatland overhead, step phase         {median('flatland_ms'):.3f} ms/step")
        print(f"flatland overhead, incl. env_create   {median('flatland_wall_ms'):.3f} ms/step")
        print(f"ratio flateval / flatland (step phase) {median('flateval_ms') / median('flatland_ms'):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
