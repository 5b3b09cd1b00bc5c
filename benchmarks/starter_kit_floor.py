"""The floor of the torch-kit workload: the starter kit replica's own work with no evaluator at all.

One process (`floor-1`): in a fresh interpreter, as a script starts, import torch, flatland and the
kit (`startup_s`, with what flateval's bridge does to every agent's start: flatland's unused
matplotlib.pyplot deferred, `agent_bridge.deferred_imports`); then for every env of the test set,
what the kit's process does under any evaluator (load its copy, reset as flatland's service does,
build the tree observations, normalize and evaluate the DDDQN for every agent that must act, step
its copy; `agent_s`), and what the evaluator's side must do at least (load and reset the
authoritative copy, step it with the same actions, no observations; `worker_s`). With 1 worker
nothing can beat ``startup_s + agent_s``: the agent's work is serial and the slower side.

`--pairs N` (`floor-N`): N such processes at once, each pinned to a core of its own (the share
`flateval run` gives each agent), taking the episodes as each becomes free, in the order
`flateval run` enqueues them (`broker.submit.play_order`: biggest env files first), measured from
their start to the last one's end: what N pairs on N cores could do at best with an evaluator that
costs nothing. It is measured, not computed: ``startup_s + (agent_s + worker_s) / N`` would assume
the episodes split evenly (8 of them do not) and that N busy cores run each process as fast as one
(they share caches and memory: 5-10 % slower each here); it read up to 15 % below what two
processes really manage. Prints one JSON line.

    python benchmarks/starter_kit_floor.py TEST_SET [--pairs N]
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

from flatland_baseline import FLATLAND_SEED, env_files  # noqa: E402  (light: no flatland yet)


def load_kit():
    """Import what the kit's process imports, as a script would; the seconds since the interpreter
    started (its start-up)."""
    from agent_bridge.deferred_imports import defer_imports

    defer_imports()
    import starter_kit_run  # noqa: F401  (torch, flatland)
    from flatland.envs.observations import TreeObsForRailEnv  # noqa: F401
    from flatland.envs.persistence import RailEnvPersister  # noqa: F401
    from flatland.envs.predictions import ShortestPathPredictorForRailEnv  # noqa: F401

    return time.perf_counter() - STARTED


def load(path: Path, builder):
    from flatland.envs.persistence import RailEnvPersister

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env, _ = RailEnvPersister.load_new(str(path), obs_builder=builder)
        observations, info = env.reset(regenerate_rail=True, regenerate_schedule=True, random_seed=FLATLAND_SEED)
    return env, observations, info


def agent_episode(path: Path, policy) -> tuple[list[dict], int]:
    """The kit's episode on its own copy; the actions it took."""
    import starter_kit_run as kit
    from flatland.envs.observations import TreeObsForRailEnv
    from flatland.envs.predictions import ShortestPathPredictorForRailEnv

    builder = TreeObsForRailEnv(max_depth=kit.TREE_DEPTH, predictor=ShortestPathPredictorForRailEnv(kit.MAX_PATH_DEPTH))
    env, observations, info = load(path, builder)
    builder.reset(env)
    observations = builder.get_many(list(range(len(env.agents))))
    taken = []
    while True:
        actions = {agent: policy.act(kit.normalize_observation(observations[agent], kit.TREE_DEPTH,
                                                               kit.OBSERVATION_RADIUS))
                   for agent in range(len(env.agents)) if info["action_required"][agent] and observations[agent]}
        taken.append(actions)
        observations, _, done, info = env.step(actions)
        if done["__all__"]:
            return taken, len(env.agents)


def worker_episode(path: Path, taken: list[dict]) -> None:
    from flatland.core.env_observation_builder import DummyObservationBuilder

    env, _, _ = load(path, DummyObservationBuilder())
    for actions in taken:
        env.step(actions)


def claimed(claims: Path | None, index: int) -> bool:
    """Whether this process takes episode `index` (the first of the pairs to ask gets it)."""
    if claims is None:
        return True
    try:
        os.close(os.open(claims / str(index), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def one_process(test_set: Path, claims: Path | None = None, order: list[str] | None = None) -> dict:
    """The kit's work (and the evaluator side's least) for every episode this process takes, in
    `order` (default: the test set's)."""
    import starter_kit_run as kit
    from flatland.envs.observations import TreeObsForRailEnv

    startup_s = load_kit()
    policy = kit.DDDQNPolicy(TreeObsForRailEnv(max_depth=kit.TREE_DEPTH).observation_dim * 21, kit.ACTION_SIZE)
    agent_s = worker_s = 0.0
    steps = episodes = 0
    for index, rel in enumerate(order or env_files(test_set)):
        if not claimed(claims, index):
            continue
        started = time.perf_counter()
        taken, _ = agent_episode(test_set / rel, policy)
        agent_s += time.perf_counter() - started
        started = time.perf_counter()
        worker_episode(test_set / rel, taken)
        worker_s += time.perf_counter() - started
        steps += len(taken)
        episodes += 1
    return {"startup_s": startup_s, "agent_s": agent_s, "worker_s": worker_s, "steps": steps, "episodes": episodes,
            "floor_1_s": startup_s + agent_s}


def pairs(test_set: Path, n: int) -> dict:
    """`n` processes at once, one per core, taking the episodes as they become free."""
    from broker.submit import play_order

    files = env_files(test_set)
    order = [files[i] for i in play_order([str(test_set / rel) for rel in files])]
    cores = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as claims:
        started = time.perf_counter()
        processes = [subprocess.Popen([sys.executable, __file__, str(test_set), "--claims", claims,
                                       "--order", ",".join(order)],
                                      stdout=subprocess.PIPE, text=True,
                                      preexec_fn=(lambda core=cores[i % len(cores)]: os.sched_setaffinity(0, {core})))
                     for i in range(n)]
        parts = [json.loads(p.communicate()[0].splitlines()[-1]) for p in processes]
        wall = time.perf_counter() - started
    if any(p.returncode for p in processes):
        raise SystemExit("a floor process failed")
    return {f"floor_{n}_s": wall, "parts": parts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("test_set", type=Path)
    parser.add_argument("--pairs", type=int, default=1, help="processes at once, one per core (default 1)")
    parser.add_argument("--claims", type=Path, help=argparse.SUPPRESS)  # a pair's: the folder of taken episodes
    parser.add_argument("--order", help=argparse.SUPPRESS)  # a pair's: the env files, comma-separated, in play order
    args = parser.parse_args(argv)
    test_set = args.test_set.resolve()
    order = args.order.split(",") if args.order else None
    result = pairs(test_set, args.pairs) if args.pairs > 1 else one_process(test_set, args.claims, order)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
