"""What one Redis costs per episode, with many light workers: the basis for sizing it at 1,000 workers.

Starts one Redis (append-only, as `flateval run`'s), N `flateval worker`s (each with its agent, the
CartPole starter always pushing left: a trivial env and an agent that answers at once, so the
workers press Redis as hard as they can), then evaluates E CartPole episodes and reports:

* episodes per second, and where the CPU went (Redis, the workers, the agents);
* Redis commands and bytes per episode (INFO commandstats and stats), and Redis's own CPU per
  episode: what bounds how many episodes one Redis core serves;
* what N idle workers cost Redis per second (their polling and reaping), and one reaper pass over
  R running episodes (`broker.reaper.requeue_orphans`): commands and microseconds (idle workers
  take turns: one pass a second per submission, the others skip it);
* what a running episode costs per second (lease renewal, the submission watch), measured.

    python benchmarks/redis_scale.py [--workers 50] [--episodes 1000] [--json out.json]

On a small machine the workers' own CPU is the limit long before Redis is: the figures per episode
are what carries over (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from broker import reaper, store, submit  # noqa: E402
from broker.embedded_redis import start_redis  # noqa: E402
from broker.plan import PlannedEpisode, make_plan  # noqa: E402
from chaos_soak import wait_until  # noqa: E402
from core.challenge import Phase, StopRules  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FLATEVAL = [sys.executable, "-m", "flateval"]
AGENT = f"{sys.executable} {ROOT / 'examples' / 'cartpole' / 'agent.py'} --always-left"
POLL_S = 1.0  # how often this script looks (one HGET): a known, subtracted share of the commands


class RedisMeter:
    """Redis's own counters: commands by name, bytes in and out, its CPU seconds."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn

    def read(self) -> dict:
        commands = {k.removeprefix("cmdstat_"): v for k, v in self.conn.info("commandstats").items()}
        stats, cpu = self.conn.info("stats"), self.conn.info("cpu")
        return {"calls": {k: v["calls"] for k, v in commands.items()}, "usec": {k: v["usec"] for k, v in commands.items()},
                "in": stats["total_net_input_bytes"], "out": stats["total_net_output_bytes"],
                "cpu_s": cpu["used_cpu_sys"] + cpu["used_cpu_user"], "t": time.monotonic()}

    @staticmethod
    def delta(before: dict, after: dict, ours: int = 0) -> dict:
        """What happened between two reads; `ours` HGETs of this script's polling are taken out,
        and so are INFO, CONFIG and the like (the meter itself)."""
        calls = {k: after["calls"][k] - before["calls"].get(k, 0) for k in after["calls"]}
        usec = {k: after["usec"][k] - before["usec"].get(k, 0) for k in after["usec"]}
        for meta in ("info", "config|resetstat", "config", "client|setinfo", "client|list", "hello"):
            calls.pop(meta, None)
            usec.pop(meta, None)
        if ours and "hget" in calls:
            calls["hget"] = max(0, calls["hget"] - ours)
        return {"calls": {k: v for k, v in calls.items() if v}, "usec": {k: v for k, v in usec.items() if v},
                "commands": sum(calls.values()), "in": after["in"] - before["in"], "out": after["out"] - before["out"],
                "cpu_s": after["cpu_s"] - before["cpu_s"], "s": after["t"] - before["t"]}


def process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reaper_pass_cost(conn: redis.Redis, meter: RedisMeter, running: int) -> dict:
    """One `requeue_orphans` over a submission with `running` episodes under live leases."""
    from rq.registry import StartedJobRegistry

    episodes = [PlannedEpisode(env_file=f"Test_0/Level_{i}.pkl", seed=1001, env_path="x", test=0, level=i)
                for i in range(max(1, running))]
    plan = make_plan(episodes, Phase(name="p", stop_rules=StopRules(None, None)))
    sid = submit.create(conn, plan)
    queue = store.submission_queue(conn, sid)
    registry = StartedJobRegistry(queue=queue)
    pipe = conn.pipeline()
    for i in range(running):
        job_id = store.episode_job_id(sid, i)
        pipe.zadd(registry.key, {f"{job_id}:execution-{i}": time.time() + 600})
        pipe.set(store.lease_key(job_id), reaper.lease_holder(f"w{i}", 1), ex=600)
    pipe.execute()
    passes = 20
    before = meter.read()
    started = time.perf_counter()
    for _ in range(passes):
        reaper.requeue_orphans(conn, sid)
    took = (time.perf_counter() - started) / passes
    spent = RedisMeter.delta(before, meter.read())
    reaper.reap_open_submissions(conn)  # one worker's turn: the others skip the submission for a second
    before = meter.read()
    for _ in range(passes):
        reaper.reap_open_submissions(conn)
    skipped = RedisMeter.delta(before, meter.read())
    store.finalize(conn, sid, store.CANCELLED)
    return {"running": running, "commands": spent["commands"] / passes, "redis_usec": sum(spent["usec"].values()) / passes,
            "wall_ms": took * 1000, "skipped_commands": skipped["commands"] / passes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="flateval-scale-"))
    server = start_redis(appendonly=True, directory=str(work / "redis"))
    conn = redis.Redis.from_url(server.url)
    meter = RedisMeter(conn)
    workers: list[subprocess.Popen] = []
    report: dict = {"workers": args.workers, "episodes": args.episodes, "cores": os.cpu_count()}
    try:
        env = {**os.environ, "FLATEVAL_REDIS_URL": server.url}
        started = time.monotonic()
        for i in range(args.workers):
            with open(work / f"w{i}.log", "wb") as log:
                workers.append(subprocess.Popen(
                    [*FLATEVAL, "worker", "--name", f"w{i}", "--no-sandbox", "--agent-command", AGENT,
                     "--agent-log", str(work / f"a{i}.log")], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT))
        ready = lambda: sum("waiting for episodes" in (work / f"w{i}.log").read_text(errors="replace")  # noqa: E731
                            for i in range(args.workers))
        wait_until(lambda: ready() == args.workers or any(w.poll() is not None for w in workers), 900,
                   "every worker to start")
        if any(w.poll() is not None for w in workers):
            raise RuntimeError("a worker exited at start: see " + str(work))
        report["startup_s"] = time.monotonic() - started
        agents = _agent_pids(workers)
        report["rss_mb"] = {"worker": sum(rss_bytes(w.pid) for w in workers) / args.workers / 2**20,
                            "agent": sum(rss_bytes(p) for p in agents) / max(1, len(agents)) / 2**20}

        before = meter.read()
        time.sleep(10)  # the idle workers' own traffic, over a fixed span
        report["idle"] = RedisMeter.delta(before, meter.read())

        cpu0 = {"workers": sum(process_cpu_s(w.pid) for w in workers), "agents": sum(process_cpu_s(p) for p in agents)}
        before = meter.read()
        sid = subprocess.run([*FLATEVAL, "submit", "--redis", server.url, "--env", "gymnasium:CartPole-v1",
                              "--episodes", str(args.episodes), "--seed", "7"], capture_output=True, text=True,
                             cwd=ROOT, check=True).stdout.strip().splitlines()[-1]
        polls = 0
        while store.get_status(conn, sid) not in store.TERMINAL:
            polls += 1
            time.sleep(POLL_S)  # a slow look, counted and taken out of the figures
        after = meter.read()
        run = RedisMeter.delta(before, after, ours=polls)
        record = store.get_submission(conn, sid)
        wall = record.finished_at - record.submitted_at if record.finished_at else run["s"]
        results = store.get_results(conn, sid)
        report["run"] = {"status": record.status, "stored": len(results), "wall_s": wall,
                         "episodes_per_s": len(results) / wall,
                         "steps_per_episode": sum(r["steps"] for r in results) / max(1, len(results)),
                         "commands_per_episode": run["commands"] / max(1, len(results)),
                         "bytes_in_per_episode": run["in"] / max(1, len(results)),
                         "bytes_out_per_episode": run["out"] / max(1, len(results)),
                         "redis_cpu_ms_per_episode": 1000 * run["cpu_s"] / max(1, len(results)),
                         "redis_cpu_share": run["cpu_s"] / wall,
                         "top_commands": sorted(((k, v / max(1, len(results))) for k, v in run["calls"].items()),
                                                key=lambda kv: -kv[1])[:12],
                         "cpu_s": {"redis": run["cpu_s"],
                                   "workers": sum(process_cpu_s(w.pid) for w in workers) - cpu0["workers"],
                                   "agents": sum(process_cpu_s(p) for p in agents) - cpu0["agents"]}}
        report["reaper"] = [reaper_pass_cost(conn, meter, n) for n in (0, 50, 1000)]
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        server.stop()
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["run"]["status"] == "finished" and report["run"]["stored"] == args.episodes else 1


def _agent_pids(workers: list[subprocess.Popen]) -> list[int]:
    """Every process of the agents the workers started (each agent is a process group of its own,
    led by a child of its worker)."""
    groups = set()
    for w in workers:
        try:
            groups.update(int(p) for p in Path(f"/proc/{w.pid}/task/{w.pid}/children").read_text().split())
        except OSError:
            pass
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) in groups:
                members.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return members


def print_report(r: dict) -> None:
    run = r["run"]
    print(f"{r['workers']} workers (CartPole-v1, an agent that always pushes left) against one Redis, "
          f"{r['cores']} cores; started in {r['startup_s']:.0f} s; RSS {r['rss_mb']['worker']:.0f} MiB a worker, "
          f"{r['rss_mb']['agent']:.0f} MiB an agent")
    print(f"  {run['stored']}/{r['episodes']} episodes {run['status']} in {run['wall_s']:.1f} s: "
          f"{run['episodes_per_s']:.1f} episodes/s, {run['steps_per_episode']:.1f} steps an episode")
    print(f"  Redis per episode: {run['commands_per_episode']:.1f} commands, {run['bytes_in_per_episode']:.0f} B in, "
          f"{run['bytes_out_per_episode']:.0f} B out, {run['redis_cpu_ms_per_episode']:.2f} ms of Redis CPU "
          f"(Redis busy {100 * run['redis_cpu_share']:.0f} % of one core)")
    print("  commands per episode: " + ", ".join(f"{k} {v:.1f}" for k, v in run["top_commands"]))
    cpu = run["cpu_s"]
    print(f"  CPU seconds: Redis {cpu['redis']:.1f}, workers {cpu['workers']:.1f}, agents {cpu['agents']:.1f}")
    idle = r["idle"]
    print(f"  {r['workers']} idle workers: {idle['commands'] / idle['s']:.0f} commands/s, "
          f"{100 * idle['cpu_s'] / idle['s']:.1f} % of a Redis core")
    for p in r["reaper"]:
        print(f"  one reaper pass over {p['running']} running episodes: {p['commands']:.0f} commands, "
              f"{p['redis_usec']:.0f} us of Redis, {p['wall_ms']:.1f} ms for the caller; a worker whose turn it is "
              f"not: {p['skipped_commands']:.0f} commands")


if __name__ == "__main__":
    raise SystemExit(main())
