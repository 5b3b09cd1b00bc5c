"""Chaos soak: one `flateval run` of many episodes on several pairs under a seeded random schedule of
faults, then proof that nothing was lost, counted twice, or scored differently.

The schedule, drawn from `--seed`, mixes:

* agent faults, applied by the agent itself in exactly the episode the schedule names
  (benchmarks/chaos_agent.py): SIGSTOP past the step deadline (the episode must be a `timeout`),
  SIGSTOP within it (nothing may change), SIGKILL (an `agent_error`);
* env workers SIGKILLed at random moments (their episode is re-run and scored once);
* Redis restarted (stopped, then started on its append-only file);
* duplicate deliveries of episodes already scored (they must not count again).

Checks: every episode has exactly one result; the episodes the schedule cut are exactly the
`timeout`s and `agent_error`s; every other episode scores what stepping its env directly scores
(a do-nothing agent: no evaluator can change that number). Prints the faults injected, recovered,
their time to recover, and the seed to replay it.

    python benchmarks/chaos_soak.py [--seed 7] [--episodes 300] [--pairs 3] [--json report.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from broker import reaper, store  # noqa: E402
from broker.embedded_redis import RedisServer, start_redis  # noqa: E402
from broker.submit import JOB_FUNCTION  # noqa: E402

AGENT = Path(__file__).resolve().parent / "chaos_agent.py"
STEP_S = 0.5
PING_S = STEP_S  # a stopped agent that answers within one more step deadline keeps its process
FAULTS = ("kill_worker", "restart_redis", "duplicate")


@dataclass
class Fault:
    kind: str
    after_results: int  # when: once this many episodes are stored (so every fault lands mid-run)
    target: str = ""
    injected: bool = False  # False: the evaluation ended before its moment came
    recovered_s: float | None = None  # until the system had made progress past it


@dataclass
class Comparison:
    """An evaluation's results document against stepping every env directly."""
    results: int = 0
    lost: list[str] = field(default_factory=list)
    double_counted: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.double_counted or self.wrong)


@dataclass(kw_only=True)
class SoakReport(Comparison):
    seed: int
    episodes: int
    pairs: int
    faults: list[Fault] = field(default_factory=list)
    agent_faults: dict[str, list] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.results == self.episodes and super().ok \
            and all(f.recovered_s is not None for f in self.faults if f.injected)


def copies_test_set(out: Path, sources: Path, episodes: int) -> dict[str, Path]:
    """`episodes` env files (``Test_<i>/Level_<j>``, 5 levels a test) copied from a small test set."""
    files = sorted(sources.glob("Test_*/Level_*.pkl"))
    layout = {}
    for i in range(episodes):
        name = f"Test_{i // 5}/Level_{i % 5}.pkl"
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(files[i % len(files)], out / name)
        layout[name] = files[i % len(files)]
    return layout


def direct_scores(sources: set[Path]) -> dict[Path, float]:
    """What a do-nothing agent scores on each env, stepping it in-process as flatland's service resets it."""
    from flatland.envs.persistence import RailEnvPersister

    scores = {}
    for path in sources:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env, _ = RailEnvPersister.load_new(str(path))
            env.reset(regenerate_rail=True, regenerate_schedule=True, random_seed=1001)
        total, done = 0.0, {"__all__": False}
        while not done["__all__"]:
            _, rewards, done, _ = env.step({})
            total += sum(rewards.values())
        scores[path] = total / (env._max_episode_steps * env.get_num_agents())
    return scores


def draw_schedule(rng: random.Random, names: list[str], pairs: int, process_faults: int) -> tuple[dict, list[Fault]]:
    """Agent faults on a tenth of the episodes (a third each: stopped past the deadline, stopped
    within it, killed), and `process_faults` faults of the processes around them."""
    agent_faults = {}
    for name in rng.sample(names, max(3, len(names) // 10)):
        kind = rng.choice(("stop_past", "stop_within", "kill"))
        step = rng.randint(3, 40)
        if kind == "stop_past":  # past the deadline; at times past the ping too: then the agent is restarted
            agent_faults[name] = ["stop", step, round(rng.uniform(STEP_S + 0.2, STEP_S + PING_S + 1.0), 2)]
        elif kind == "stop_within":
            agent_faults[name] = ["stop", step, round(rng.uniform(0.05, STEP_S / 3), 2)]
        else:
            agent_faults[name] = ["kill", step, 0]
    kinds = [FAULTS[i % len(FAULTS)] for i in range(process_faults)]
    rng.shuffle(kinds)
    moments = sorted(rng.randint(1, max(1, len(names) - 2 * pairs)) for _ in kinds)
    faults = [Fault(kind, moment, f"pair-{rng.randrange(pairs)}" if kind == "kill_worker" else "")
              for kind, moment in zip(kinds, moments)]
    return agent_faults, faults


def expected_outcome(fault: list | None) -> str:
    if fault is None or (fault[0] == "stop" and fault[2] < STEP_S):
        return "completed"
    return "timeout" if fault[0] == "stop" else "agent_error"


def worker_pid(pair: str, sid: str) -> int | None:
    """The live `flateval worker` of a pair of this submission (respawned ones are named pair-i-rN)."""
    pattern = re.compile(rf"^{re.escape(pair)}(-r\d+)?-flateval-{re.escape(sid)}$")
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "worker" in argv and "--name" in argv and pattern.match(argv[argv.index("--name") + 1]):
            return int(cmdline.parent.name)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_soak(seed: int, episodes: int, pairs: int, sources: Path, process_faults: int | None = None,
             timeout_s: float = 900) -> SoakReport:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="flateval-chaos-"))
    layout = copies_test_set(work / "tests", sources, episodes)
    process_faults = max(3, episodes // 15) if process_faults is None else process_faults
    agent_faults, faults = draw_schedule(rng, sorted(layout), pairs, process_faults)
    report = SoakReport(seed=seed, episodes=episodes, pairs=pairs, faults=faults, agent_faults=agent_faults)
    port = free_port()
    server = start_redis(port=port, appendonly=True, directory=str(work / "redis"))
    out = work / "results.json"
    run = subprocess.Popen(
        [sys.executable, "-m", "flateval", "run", "--redis", server.url, "--test-set", str(work / "tests"),
         "--workers", str(pairs), "--step-timeout", str(STEP_S), "--output", str(out),
         "--agent", f"{sys.executable} {AGENT} '{json.dumps(agent_faults)}'"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    try:
        conn = redis.Redis.from_url(server.url)
        sid = wait_until(lambda: _first(conn.zrange(store.SUBMISSIONS, 0, -1)), 120, "the submission")
        specs = wait_until(lambda: _queued_specs(conn, sid), 60, "the queued episodes")
        wait_until(lambda: store.count_results(conn, sid), 120, "a first result")
        report.wall_s = time.monotonic()
        server = _inject(faults, conn, sid, specs, server, run, rng)
        _, stderr = run.communicate(timeout=max(1.0, timeout_s - (time.monotonic() - started)))
        report.wall_s = time.monotonic() - report.wall_s
        if run.returncode != 0:
            raise RuntimeError(f"flateval run failed: {stderr.strip()[-2000:]}")
        document = json.loads(out.read_text())
        _check(report, document, layout, direct_scores(set(layout.values())))
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return report


def _inject(faults: list[Fault], conn: redis.Redis, sid: str, specs: list[dict], server: RedisServer,
            run: subprocess.Popen, rng: random.Random) -> RedisServer:
    """Play the schedule against the running evaluation; each fault's time to recover is measured as
    it happens. Returns the Redis server (a new process after a restart)."""
    for fault in faults:
        wait_until(lambda: store.count_results(conn, sid) >= fault.after_results or run.poll() is not None, 300,
              f"{fault.after_results} results")
        if run.poll() is not None:
            return server  # the evaluation ended before the rest of the schedule
        fault.injected = True
        if fault.kind == "kill_worker":
            fault.recovered_s = _kill_worker(conn, sid, fault.target, run)
        elif fault.kind == "restart_redis":
            server, fault.recovered_s = _restart_redis(conn, sid, server, run)
        else:
            fault.recovered_s, fault.target = _duplicate(conn, sid, specs, rng)
    return server


def _kill_worker(conn: redis.Redis, sid: str, pair: str, run: subprocess.Popen) -> float | None:
    """SIGKILL a pair's worker; recovered when the episode it held is stored (the reaper re-ran it)."""
    pid = worker_pid(pair, sid)
    if pid is None:
        return 0.0  # that pair is already being respawned
    held = [job for job, owner in _leases(conn).items() if owner.startswith(f"{pair}-")]
    killed = time.monotonic()
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return 0.0
    indices = [job.rsplit("-", 1)[1] for job in held]
    if indices:  # recovered when the episode it held is stored
        wait_until(lambda: all(conn.hexists(store.results_key(sid), i) for i in indices) or run.poll() is not None,
              120, f"the episode {pair}'s worker held")
    else:  # it was idle: recovered when the pair is back
        wait_until(lambda: worker_pid(pair, sid) not in (None, pid) or run.poll() is not None, 120, f"{pair} respawned")
    return time.monotonic() - killed


def _restart_redis(conn: redis.Redis, sid: str, server: RedisServer, run: subprocess.Popen) -> tuple[RedisServer, float]:
    stored = store.count_results(conn, sid)
    stopped = time.monotonic()
    server.stop(keep_data=True)
    server = start_redis(port=server.port, appendonly=True, directory=server.directory)
    wait_until(lambda: store.count_results(conn, sid) > stored or run.poll() is not None, 120, "a result after the restart")
    return server, time.monotonic() - stopped


def _duplicate(conn: redis.Redis, sid: str, specs: list[dict], rng: random.Random) -> tuple[float, str]:
    """Deliver an episode already scored once more, first in line (as RQ would re-deliver it);
    recovered when it was played again (and, the final check shows, changed nothing)."""
    stored = [s for s in specs if conn.hexists(store.results_key(sid), str(s["index"]))]
    spec = rng.choice(stored or specs)
    job_id = f"{store.episode_job_id(sid, spec['index'])}-again"
    sent = time.monotonic()
    store.submission_queue(conn, sid).enqueue(JOB_FUNCTION, spec, job_id=job_id, result_ttl=0, at_front=True)
    wait_until(lambda: not conn.exists(f"rq:job:{job_id}") or store.get_status(conn, sid) in store.TERMINAL, 120,
          "the duplicate to be played")
    return time.monotonic() - sent, spec["env_file"]


def compare_with_direct(document: dict, layout: dict[str, Path], direct: dict[Path, float],
                        expected: Callable[[str], str] = lambda name: "completed",
                        found: Comparison | None = None) -> Comparison:
    """Every episode of `layout` stored exactly once, with the outcome `expected` names for it, and a
    completed one scored exactly as stepping its env directly (`direct_scores`); written into
    `found` when given."""
    found = found if found is not None else Comparison()
    episodes = document["episodes"]
    found.results = len(episodes)
    seen: dict[int, int] = {}
    for episode in episodes:
        seen[episode["index"]] = seen.get(episode["index"], 0) + 1
    found.double_counted = [str(i) for i, n in seen.items() if n > 1]
    if document["score"]["episodes"] != len(seen):
        found.double_counted.append(f"score counts {document['score']['episodes']} episodes, {len(seen)} stored")
    stored = {e["env_file"] for e in episodes}
    found.lost = sorted(set(layout) - stored)
    for episode in episodes:
        name = episode["env_file"]
        outcome = expected(name)
        if episode["outcome"] != outcome:
            found.wrong.append(f"{name}: {episode['outcome']} ({episode.get('error')}), expected {outcome}")
        elif outcome == "completed" and abs(episode["normalized_return"] - direct[layout[name]]) > 1e-9:
            found.wrong.append(f"{name}: scored {episode['normalized_return']!r}, direct stepping "
                               f"{direct[layout[name]]!r}")
    return found


def _check(report: SoakReport, document: dict, layout: dict[str, Path], direct: dict[Path, float]) -> None:
    compare_with_direct(document, layout, direct, lambda name: expected_outcome(report.agent_faults.get(name)), report)


def _leases(conn: redis.Redis) -> dict[str, str]:
    return {k.decode().removeprefix(store.lease_key("")): reaper.lease_owner((conn.get(k) or b"").decode())
            for k in conn.scan_iter(store.lease_key("*"))}


def _queued_specs(conn: redis.Redis, sid: str) -> list[dict]:
    return [job.args[0] for job in store.submission_queue(conn, sid).jobs]


def _first(values: list) -> str | None:
    return values[0].decode() if values else None


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = predicate()
        except redis.ConnectionError:
            value = None  # Redis restarting: look again
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling processes and Redis for a state they reach on their own


def print_report(report: SoakReport) -> None:
    print(f"chaos soak, seed {report.seed}: {report.episodes} episodes on {report.pairs} pairs, "
          f"{report.wall_s:.1f} s from the first result")
    cut = sum(expected_outcome(f) != "completed" for f in report.agent_faults.values())
    print(f"agent faults (self-inflicted in the episode named): {len(report.agent_faults)} "
          f"({cut} must cut their episode)")
    for kind in FAULTS:
        done = [f for f in report.faults if f.kind == kind and f.injected]
        recovered = [f.recovered_s for f in done if f.recovered_s is not None]
        timing = (f"recovered in median {statistics.median(recovered):.2f} s, max {max(recovered):.2f} s"
                  if recovered else "")
        print(f"  {kind:<14} {len(done):>3} injected, {len(recovered):>3} recovered  {timing}")
    print(f"results {report.results}/{report.episodes}; lost {len(report.lost)}; double-counted "
          f"{len(report.double_counted)}; wrong outcome or score {len(report.wrong)}")
    for line in report.lost + report.double_counted + report.wrong:
        print(f"  {line}")
    print("OK" if report.ok else "FAILED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--faults", type=int, help="process faults (default: one per 15 episodes)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    from env_worker.flatland_test_set import generate_test_set

    with tempfile.TemporaryDirectory() as scratch:
        generate_test_set(Path(scratch), "small", seed=42)
        report = run_soak(args.seed, args.episodes, args.pairs, Path(scratch), args.faults)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
