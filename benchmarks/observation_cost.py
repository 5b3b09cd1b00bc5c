"""What observations with numpy arrays cost on the wire, for 50 agents (NeurIPS 2020's Test_3 shape).

For each observation builder, over the same steps of one generated 50-agent env:

* env step   - flatland's own step, building the observations included (the env's cost);
* to wire    - turning flatland's observations into wire form (a tree flattened into one float
               array per agent, a global observation's three arrays as they are);
* encode     - msgpack-encoding the whole ``step`` message (arrays go as raw buffers, ext type 1);
* decode     - what the agent pays to decode it (arrays come back as zero-copy views);
* bytes      - the ``step`` message's size;
* messaging  - per step of a real episode against an agent that asks for the builder: the step
               loop's time minus the time inside the env adapter's step (flatland's step and the
               conversion to wire form), i.e. encoding, ZeroMQ both ways, the agent's decode and reply.

    python benchmarks/observation_cost.py [--steps 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from episode_overhead import LoopTimer  # noqa: E402

from agent_bridge import protocol as wire  # noqa: E402
from flateval.local_cluster import agent_spin_env  # noqa: E402
from env_worker.agent_link import AgentLink  # noqa: E402
from env_worker.agent_process import AgentProcess  # noqa: E402
from env_worker.episode import run_episode  # noqa: E402
from env_worker.flatland_env import FlatlandEnv, warm_up  # noqa: E402
from env_worker.flatland_test_set import TestConfig, generate_test_set  # noqa: E402
from core.episode_spec import EpisodeSpec  # noqa: E402

SHAPE = TestConfig(50, 20, 35, 3, levels=1)  # NeurIPS 2020 Round 1, Test_3
BUILDERS = {
    "none": {"builder": "none"},
    "tree depth 2": {"builder": "tree", "max_depth": 2},
    "tree depth 3": {"builder": "tree", "max_depth": 3},
    "global": {"builder": "global"},
}
SEED = 1001


def in_process(path: Path, spec: dict, steps: int) -> dict:
    """Median per-step times (s) of the env step, wire conversion, encode and decode; bytes."""
    env = FlatlandEnv(path, SEED)
    env.use_observation(spec)
    env.reset()
    rows = []
    for step in range(steps):
        started = time.perf_counter()
        obs, rewards, dones, info = env.env.step({})
        stepped = time.perf_counter()
        wired = env._wire_observations(obs)
        converted = time.perf_counter()
        frame = wire.encode({"type": wire.STEP, "step": step, "observations": wired, "rewards": list(rewards.values()),
                             "dones": [bool(d) for k, d in dones.items() if k != "__all__"], "info": env._wire_info(info)})
        encoded = time.perf_counter()
        wire.decode_request(frame)
        decoded = time.perf_counter()
        rows.append((stepped - started, converted - stepped, encoded - converted, decoded - encoded, len(frame)))
        if dones["__all__"]:
            break
    env.release()
    return {name: statistics.median(r[i] for r in rows)
            for i, name in enumerate(("env_s", "wire_s", "encode_s", "decode_s", "bytes"))}


def end_to_end(path: Path, spec: dict, scratch: Path) -> dict:
    """One real episode against an agent that asks for `spec`: its step loop's time and steps."""
    os.environ["STAMP_OBSERVATION"] = __import__("json").dumps(spec)
    os.environ.update(agent_spin_env(workers=1))
    agent = AgentProcess(f"{sys.executable} {Path(__file__).resolve().parent / 'stamp_agent.py'}", scratch / "agent.log")
    agent.start()
    link = AgentLink(agent.endpoint)
    timer = LoopTimer()
    try:
        result = run_episode(EpisodeSpec(env_path=str(path), env_file=path.name, seed=SEED), link, [timer])
    finally:
        link.close()
        agent.stop()
    if result.outcome != "completed":
        raise RuntimeError(f"{spec}: {result.outcome}: {result.error}")
    return {"messaging_s": (timer.loop_s - timer.env_s) / result.steps, "steps": result.steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="steps measured in-process per builder")
    args = parser.parse_args(argv)
    warm_up()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        (path,) = generate_test_set(scratch / "set", [SHAPE])
        print(f"env: {SHAPE.n_agents} agents, {SHAPE.x_dim}x{SHAPE.y_dim}, {SHAPE.n_cities} cities; "
              f"medians per step over the first {args.steps} steps")
        print(f"{'builder':<14}{'env step':>10}{'to wire':>10}{'encode':>10}{'decode':>10}{'bytes':>10}"
              f"{'MB/s enc':>10}{'messaging':>12}")
        for name, spec in BUILDERS.items():
            cost = in_process(path, spec, args.steps)
            run = end_to_end(path, spec, scratch)
            rate = cost["bytes"] / cost["encode_s"] / 1e6 if cost["encode_s"] else float("inf")
            print(f"{name:<14}{1e3 * cost['env_s']:>8.3f}ms{1e3 * cost['wire_s']:>8.3f}ms"
                  f"{1e3 * cost['encode_s']:>8.3f}ms{1e3 * cost['decode_s']:>8.3f}ms{cost['bytes']:>10.0f}"
                  f"{rate:>10.0f}{1e3 * run['messaging_s']:>10.3f}ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
