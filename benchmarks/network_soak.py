"""flateval over a slow, lossy, partitioned network: what it costs, and proof that no score changes.

Redis, each env worker and each agent on hosts of their own (benchmarks/netlab.py: network
namespaces joined by links that delay, lose and cut packets). Three parts, each with every
episode's score compared with stepping its env directly (the chaos soak's comparison):

* ``redis``: round trips of 0, 20 and 100 ms with 1 % loss each way between every worker and Redis:
  the cost per episode (wall time x workers / episodes, less the episodes' own time) and Redis
  commands per episode;
* ``agent``: 0, 1 and 10 ms between each worker and its agent: the cost per step (median reply
  time against 0 ms), which counts against the step deadline;
* ``partition``: one worker cut off from Redis mid-episode for --cut-s (past its 10 s lease), then
  restored: when its episode was requeued, when it was stored again, the first worker's result
  refused, the time the evaluation lost against an undisturbed one.

    python benchmarks/network_soak.py [--parts redis,agent,partition] [--episodes 24] [--pairs 2]

Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import chaos_soak  # noqa: E402
import netlab  # noqa: E402
from broker import reaper, store  # noqa: E402
from net_cluster import NetCluster  # noqa: E402
from redis_scale import RedisMeter  # noqa: E402

AGENT = Path(__file__).resolve().parent / "chaos_agent.py"
REDIS_LINKS = ((0, 0), (20, 1), (100, 1))
AGENT_LINKS = (0, 1, 10)
TABLE_HEAD = "| fault | what was checked | what held | time lost |\n|---|---|---|---|"


def evaluate(net: NetCluster, test_set: Path, layout: dict, direct: dict) -> dict:
    """One submission on the cluster as it is shaped now: its wall time, its episodes, Redis's share."""
    meter = RedisMeter(net.conn)
    before = meter.read()
    sid = net.submit(test_set)
    status = net.wait_ended(sid, 1800)
    spent = RedisMeter.delta(before, meter.read())
    document = net.results(sid)
    found = chaos_soak.compare_with_direct(document, layout, direct)
    record = store.get_submission(net.conn, sid)
    episodes = document["episodes"]
    return {"status": status, "ok": found.ok and found.results == len(layout), "found": found,
            "wall_s": record.finished_at - record.submitted_at, "episodes": episodes,
            "episode_s": statistics.fmean(e["duration_s"] for e in episodes),
            "step_p50_s": statistics.median(e["agent_response"]["p50_s"] for e in episodes),
            "commands": spent["commands"] / len(episodes)}


def cost_per_episode(run: dict, pairs: int) -> float:
    """What each episode took a worker beyond playing it: scheduling, Redis round trips, results."""
    return run["wall_s"] * pairs / len(run["episodes"]) - run["episode_s"]


def redis_part(net: NetCluster, test_set: Path, layout: dict, direct: dict, pairs: int, rows: list) -> bool:
    print("worker <-> Redis round trip, loss each way: cost per episode (wall x workers / episodes - episode time)")
    ok, base = True, None
    for rtt, loss in REDIS_LINKS:
        net.shape(redis_rtt_ms=rtt, redis_loss_pct=loss)
        run = evaluate(net, test_set, layout, direct)
        cost = cost_per_episode(run, pairs)
        base = cost if base is None else base
        ok &= run["ok"]
        print(f"  {rtt:>4} ms {loss:g} %: wall {run['wall_s']:6.2f} s, cost {1000 * cost:7.1f} ms an episode "
              f"(+{1000 * (cost - base):6.1f} ms), {run['commands']:.0f} Redis commands an episode; scores "
              f"{'exact' if run['ok'] else run['found']}")
        if rtt:
            rows.append((f"{rtt} ms round trips and {loss:g} % loss each way between every worker and Redis",
                         f"{len(layout)} episodes on {pairs} workers against direct stepping",
                         "every score exact, every episode once" if run["ok"] else str(run["found"]),
                         f"{1000 * (cost - base):.0f} ms an episode"))
    net.shape()
    return ok


def agent_part(net: NetCluster, test_set: Path, layout: dict, direct: dict, rows: list) -> bool:
    print("worker <-> agent round trip: median reply time of a step (what the step deadline measures)")
    ok, base = True, None
    for rtt in AGENT_LINKS:
        net.shape(agent_rtt_ms=rtt)
        run = evaluate(net, test_set, layout, direct)
        base = run["step_p50_s"] if base is None else base
        ok &= run["ok"]
        steps = statistics.fmean(e["steps"] for e in run["episodes"])
        print(f"  {rtt:>4} ms: step reply {1000 * run['step_p50_s']:6.2f} ms (+{1000 * (run['step_p50_s'] - base):5.2f} ms "
              f"a step, {steps:.0f} steps an episode); scores {'exact' if run['ok'] else run['found']}")
        if rtt:
            rows.append((f"{rtt} ms round trips between each worker and its agent",
                         f"{len(layout)} episodes against direct stepping; each step's reply time",
                         ("every score exact" if run["ok"] else str(run["found"])) +
                         "; the round trip counts against the step deadline",
                         f"{1000 * (run['step_p50_s'] - base):.1f} ms a step"))
    net.shape()
    return ok


def partition_part(net: NetCluster, test_set: Path, layout: dict, direct: dict, cut_s: float, rows: list) -> bool:
    print(f"one worker cut off from Redis for {cut_s:g} s mid-episode (its lease: {reaper.LEASE_S} s)")
    calm = evaluate(net, test_set, layout, direct)
    first = net.pairs[0]
    sid = net.submit(test_set)
    job_id, _ = chaos_soak.wait_until(lambda: next(((j, v) for j, v in _leases(net) if v.startswith("w0 ")), None),
                                      120, "w0 to play an episode")
    index = job_id.rsplit("-", 1)[1]
    first.redis.cut()
    cut_at = time.monotonic()
    chaos_soak.wait_until(lambda: any(j == job_id and not v.startswith("w0 ") for j, v in _leases(net))
                          or net.conn.hexists(store.results_key(sid), index), 120, "the episode to be requeued")
    requeued_s = time.monotonic() - cut_at
    time.sleep(max(0.0, cut_s - (time.monotonic() - cut_at)))  # the rest of the cut (it lasts past the requeue)
    first.redis.restore()
    chaos_soak.wait_until(lambda: net.conn.hexists(store.results_key(sid), index), 300, "the episode stored again")
    stored_s = time.monotonic() - cut_at
    status = net.wait_ended(sid, 1800)
    document = net.results(sid)
    found = chaos_soak.compare_with_direct(document, layout, direct)
    record = store.get_submission(net.conn, sid)
    wall = record.finished_at - record.submitted_at
    played_by = next(e["worker"] for e in document["episodes"] if str(e["index"]) == index)
    refused = [line for line in first.log_text().splitlines() if "given to another worker" in line]
    ok = status == "finished" and found.ok and found.results == len(layout) and played_by != "w0"
    print(f"  requeued {requeued_s:.1f} s after the cut, stored again (by {played_by}) {stored_s:.1f} s after it; "
          f"wall {wall:.1f} s against {calm['wall_s']:.1f} s undisturbed ({wall - calm['wall_s']:+.1f} s)")
    back = ("its result refused (fenced): " + refused[-1].split(": ", 2)[-1]) if refused else \
        "its result dropped (the submission had ended)"
    print(f"  the cut-off worker, back: {back}")
    print(f"  scores {'exact, every episode once' if found.ok else found}")
    rows.append((f"one worker cut off from Redis for {cut_s:g} s mid-episode (its lease: {reaper.LEASE_S} s), then restored",
                 "the episode requeued and played by another worker; the first worker's late result; the score",
                 (f"requeued after {requeued_s:.1f} s and stored by {played_by}; the first worker, back: "
                  f"{back.split(':')[0]}; " if ok else f"{found}; ") + "every score exact, every episode once",
                 f"{wall - calm['wall_s']:+.1f} s for the evaluation ({requeued_s:.1f} s until requeued)"))
    return ok


def _leases(net: NetCluster) -> list[tuple[str, str]]:
    return [(k.decode().removeprefix(store.lease_key("")), (net.conn.get(k) or b"").decode())
            for k in net.conn.scan_iter(store.lease_key("*"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="redis,agent,partition")
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--cut-s", type=float, default=15.0)
    parser.add_argument("--step-delay", type=float, default=0.004, help="the agent's time per step")
    args = parser.parse_args(argv)
    why = netlab.unavailable()
    if why:
        print(f"network_soak: cannot run here: {why}")
        return 2
    from env_worker.flatland_test_set import generate_test_set

    ok = True
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        generate_test_set(work / "small", "small", seed=42)
        layout = chaos_soak.copies_test_set(work / "tests", work / "small", args.episodes)
        direct = chaos_soak.direct_scores(set(layout.values()))
        net = NetCluster(netlab.NetLab(seed=7), work / "cluster", args.pairs,
                         f"{sys.executable} {AGENT} '{{}}' {args.step_delay}")
        try:
            net.start_workers()
            parts = args.parts.split(",")
            print(f"{args.episodes} Flatland episodes (small preset) on {args.pairs} pairs, do-nothing agent answering "
                  f"in {1000 * args.step_delay:g} ms")
            rows: list = []
            if "redis" in parts:
                ok &= redis_part(net, work / "tests", layout, direct, args.pairs, rows)
            if "agent" in parts:
                ok &= agent_part(net, work / "tests", layout, direct, rows)
            if "partition" in parts:
                ok &= partition_part(net, work / "tests", layout, direct, args.cut_s, rows)
        finally:
            net.close()
    print(TABLE_HEAD)
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
