"""The shortest-path example agent: it decodes the rail right, beats the random agent, and is deterministic.

Episodes run through the real episode loop against real agent processes on real sockets.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

from agent_bridge import protocol as wire
from agent_bridge.examples.shortest_path import DC, DR, RailGraph, exits
from env_worker.agent_link import AgentLink
from env_worker.episode import run_episode
from env_worker.flatland_env import FlatlandEnv
from core.episode_spec import EpisodeSpec

REPO = Path(__file__).resolve().parent.parent
SHORTEST_PATH = "agent_bridge.examples.shortest_path"
RANDOM = "agent_bridge.examples.random_agent"


def env_files(test_set: Path) -> list[str]:
    return sorted(str(p.relative_to(test_set)) for p in test_set.glob("Test_*/Level_*.pkl"))


def play(test_set: Path, endpoint: str) -> list[tuple]:
    """Every episode of the test set against the agent at `endpoint`: its outcome, in a comparable form."""
    link = AgentLink(endpoint)
    results = []
    try:
        for env_file in env_files(test_set):
            test, level = (int(part.split("_")[1].split(".")[0]) for part in env_file.split("/"))
            spec = EpisodeSpec(env_path=str(test_set / env_file), env_file=env_file, test=test, level=level,
                               episode_id=f"sp-{env_file}")
            result = run_episode(spec, link)
            assert result.outcome == "completed", (env_file, result.error)
            results.append((env_file, result.percentage_complete, result.normalized_return, result.steps,
                            result.cumulative_reward))
    finally:
        link.close()
    return results


def trains_home(results: list[tuple]) -> float:
    return sum(r[1] for r in results)


def loaded(path: Path) -> FlatlandEnv:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = FlatlandEnv(path, seed=1001)
        env.reset()
    return env


def test_rail_decoding_matches_flatland(small_test_set):
    """The agent's own bit decoding agrees with flatland's get_transitions on every cell and heading."""
    for env_file in env_files(small_test_set):
        env = loaded(small_test_set / env_file)
        rail = wire.decode_request(wire.encode({"type": "x", "rail": env.facts()["rail"]}))["rail"]
        assert rail.dtype.name == "uint16"
        for r in range(env.env.height):
            for c in range(env.env.width):
                for d in range(4):
                    theirs = tuple(int(x) for x in env.env.rail.get_transitions(((r, c), d)))
                    assert tuple(int(o in exits(int(rail[r, c]), d)) for o in range(4)) == theirs, (r, c, d)


def test_distance_map_reaches_every_start(small_test_set):
    """Every train's start state has a finite distance to its target, and it decreases along a best exit."""
    for env_file in env_files(small_test_set):
        facts = wire.decode_request(wire.encode({"type": "x", "env": loaded(small_test_set / env_file).facts()}))["env"]
        graph = RailGraph(facts["rail"])
        agents = facts["agents"]
        for position, direction, target in zip(agents["initial_position"], agents["initial_direction"],
                                               agents["target"]):
            state, target = (position[0], position[1], direction), tuple(target)
            dist = graph.distances_to(target)
            assert state in dist
            while dist[state] > 0:
                o = graph.nearest_exit(state, target)
                nxt = (state[0] + DR[o], state[1] + DC[o], o)
                assert dist[nxt] == dist[state] - 1
                state = nxt


def test_agent_stays_light():
    """The agent module imports no flatland (agent images carry numpy, msgpack and pyzmq only)."""
    code = (f"import sys, {SHORTEST_PATH}; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flatland', 'redis', 'rq')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_shortest_path_beats_random_and_is_deterministic(small_test_set, start_agent):
    first = start_agent(module=SHORTEST_PATH)
    run_a = play(small_test_set, first.endpoint)
    run_b = play(small_test_set, first.endpoint)  # same process again: reset leaves nothing behind
    second = start_agent(module=SHORTEST_PATH)
    run_c = play(small_test_set, second.endpoint)  # a fresh process: nothing hangs on hash seeds or time
    assert run_a == run_b == run_c

    randomly = play(small_test_set, start_agent(module=RANDOM).endpoint)
    assert trains_home(run_a) > trains_home(randomly), (run_a, randomly)
    # On this small set a conflict-free plan exists for every train, and following it brings all home.
    assert [r[1] for r in run_a] == [1.0] * len(run_a), run_a
