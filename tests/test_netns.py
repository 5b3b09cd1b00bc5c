"""flateval over a real network: Redis, each env worker and each agent on hosts of their own (network
namespaces joined by links that delay, lose and cut packets: benchmarks/netlab.py), every score
compared with stepping the env directly (the chaos soak's comparison). benchmarks/network_soak.py
runs the long versions and measures the costs.

Skipped, with the reason, where network namespaces cannot be made (not root, no /dev/net/tun).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import chaos_soak  # noqa: E402
import netlab  # noqa: E402
from chaos_soak import wait_until  # noqa: E402
from net_cluster import NetCluster  # noqa: E402

from broker import reaper, store  # noqa: E402
from tests.conftest import slow_agent  # noqa: E402
from tests.test_run import DO_NOTHING  # noqa: E402

WHY_NOT = netlab.unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no network namespaces here: {WHY_NOT}")


@pytest.fixture
def cluster(tmp_path):
    made = []

    def make(pairs: int, agent: str) -> NetCluster:
        made.append(NetCluster(netlab.NetLab(), tmp_path / f"cluster{len(made)}", pairs, agent))
        return made[-1]

    yield make
    for each in made:
        each.close()


def layout_of(out: Path, sources: list[Path]) -> dict[str, Path]:
    """A test set of copies of `sources` (Test_0/Level_<i>), and which source each file is."""
    (out / "Test_0").mkdir(parents=True)
    layout = {}
    for i, source in enumerate(sources):
        shutil.copy(source, out / f"Test_0/Level_{i}.pkl")
        layout[f"Test_0/Level_{i}.pkl"] = source
    return layout


def by_steps(test_set: Path) -> list[Path]:
    """The test set's env files, longest episode (for a do-nothing agent) first."""
    from tests.test_run import direct_normalized_return

    return sorted(test_set.glob("Test_*/Level_*.pkl"), key=lambda p: -direct_normalized_return(p)[2])


def check(document: dict, layout: dict[str, Path], expected=lambda name: "completed") -> None:
    found = chaos_soak.compare_with_direct(document, layout, chaos_soak.direct_scores(set(layout.values())), expected)
    assert found.results == len(layout) and found.ok, found


def holder(conn) -> tuple[str, str] | None:
    """(job id, lease value) of the episode being played, if one is."""
    for key in conn.scan_iter(store.lease_key("*")):
        value = conn.get(key)
        if value:
            return key.decode().removeprefix(store.lease_key("")), value.decode()
    return None


def test_latency_and_loss_to_redis_change_no_score(cluster, small_test_set, tmp_path, fault_report):
    """20 ms round trips and 1 % loss each way between every worker and Redis; 10 ms and 1 ms to
    the agents: every score exact, and each step's reply time includes the link's round trip
    (deadlines run from our message leaving to the reply arriving)."""
    layout = layout_of(tmp_path / "tests", sorted(small_test_set.glob("Test_*/Level_*.pkl")))
    net = cluster(2, DO_NOTHING)
    net.start_workers()
    for pair, agent_rtt in zip(net.pairs, (10, 1)):
        pair.redis.shape(20, 1)
        pair.agent.shape(agent_rtt)
    sid = net.submit(tmp_path / "tests")
    assert net.wait_ended(sid, 120) == "finished"
    document = net.results(sid)
    check(document, layout)
    for episode in document["episodes"]:
        rtt = 0.010 if episode["worker"] == "w0" else 0.001
        assert episode["agent_response"]["p50_s"] >= rtt, episode
    fault_report("20 ms round trips and 1 % loss each way between every worker and Redis, 10 ms and 1 ms to "
                 "the agents (each on a host of its own: network namespaces)",
                 "every score exact, every episode once; each step's reply time includes the round trip", None)


def test_a_deadline_counts_the_network(cluster, small_test_set, tmp_path, fault_report):
    """An agent that answers at once still misses a step deadline shorter than its link's round
    trip: the deadline measures what the worker waits, network included (docs/protocol.md)."""
    [short] = by_steps(small_test_set)[-1:]
    layout = layout_of(tmp_path / "tests", [short])
    net = cluster(1, DO_NOTHING)
    net.start_workers()
    net.pairs[0].agent.shape(30)
    sid = net.submit(tmp_path / "tests", "--step-timeout", "0.02")
    net.wait_ended(sid, 60)
    [episode] = net.results(sid)["episodes"]
    assert episode["outcome"] == "timeout" and episode["normalized_return"] == -1.0, episode
    assert "step 1" in episode["error"], episode
    fault_report("a 30 ms round trip to the agent under a 0.02 s step deadline (an agent that answers at once)",
                 "the first step is a timeout: a deadline counts the network between worker and agent", None)


def test_a_worker_cut_off_past_its_lease_is_fenced(cluster, small_test_set, tmp_path, fault_report):
    """A worker cut off from Redis mid-episode for longer than its lease: its episode is requeued
    and played by the other worker; when the link returns, the first one finds its lease taken,
    stops its episode and stores nothing; the score is exact and the episode counted once."""
    [longest] = by_steps(small_test_set)[:1]
    layout = layout_of(tmp_path / "tests", [longest])
    agent, _ = slow_agent(tmp_path, delay=0.05)  # ~18 s an episode: still running when the link returns
    net = cluster(2, agent)
    first, other = net.pairs
    net.start_worker(first)  # alone at first: it takes the episode
    sid = net.submit(tmp_path / "tests")
    _, lease = wait_until(lambda: holder(net.conn), 60, "w0 to start the episode")
    assert reaper.lease_owner(lease) == "w0"
    net.start_worker(other)
    first.redis.cut()
    cut_at = time.monotonic()
    wait_until(lambda: (h := holder(net.conn)) and reaper.lease_owner(h[1]) == "w1", 60,
              "the episode to be requeued and taken by w1")
    requeued_s = time.monotonic() - cut_at
    first.redis.restore()
    wait_until(lambda: "given to another worker" in first.log_text(), 60, "w0 to learn it was fenced")
    assert net.wait_ended(sid, 60) == "finished"
    document = net.results(sid)
    check(document, layout)
    assert [e["worker"] for e in document["episodes"]] == ["w1"]
    assert store.count_results(net.conn, sid) == 1
    stopped = [line for line in first.log_text().splitlines() if "given to another worker" in line]
    assert "stopped" in stopped[0], stopped  # it stopped playing: its agent is not left in the episode
    assert first.worker.poll() is None and other.worker.poll() is None
    fault_report("an env worker cut off from Redis mid-episode past its 10 s lease (packets dropped both ways), "
                 "then the link restored",
                 "its episode is requeued and played by another worker; back online, the first worker finds a later "
                 "attempt holds the episode, stops playing and stores nothing (fenced); the score is exact, the "
                 "episode counted once", requeued_s)


def test_a_fenced_run_leaves_its_requeued_job_playable(cluster, small_test_set, tmp_path, fault_report):
    """The cut-off worker comes back before anyone took its requeued episode: its run is refused,
    and the job it leaves must still be playable (RQ deletes a finished job's hash when it keeps
    no result: the queued run would then be skipped and the episode never played)."""
    [longest] = by_steps(small_test_set)[:1]
    layout = layout_of(tmp_path / "tests", [longest])
    agent, _ = slow_agent(tmp_path, delay=0.01)
    net = cluster(1, agent)
    net.start_workers()
    [pair] = net.pairs
    sid = net.submit(tmp_path / "tests")
    job_id, _ = wait_until(lambda: holder(net.conn), 60, "the episode to start")
    pair.redis.cut()
    wait_until(lambda: not net.conn.exists(store.lease_key(job_id)), 30, "its lease to lapse")
    assert wait_until(lambda: reaper.requeue_orphans(net.conn, sid), 30, "the reaper") == [job_id]
    pair.redis.restore()
    assert net.wait_ended(sid, 90) == "finished"
    check(net.results(sid), layout)
    assert store.count_results(net.conn, sid) == 1
    assert "given to another worker" in pair.log_text()
    fault_report("an env worker cut off from Redis past its lease, back before any worker took its requeued episode",
                 "its run is refused (fenced) and the job stays playable (RQ, keeping no results, would have deleted "
                 "it: the queued run skipped, the episode never played); it plays the episode again; the score is "
                 "exact, the episode counted once", None)


def test_a_cut_to_the_agent_follows_the_deadline_rules(cluster, small_test_set, tmp_path, fault_report):
    """The link between a worker and its agent cut within a step deadline: nothing changes (TCP
    resends); cut past it: that episode is a timeout, and the next one plays as usual."""
    [short] = by_steps(small_test_set)[-1:]
    layout = layout_of(tmp_path / "tests", [short] * 3)
    agent, _ = slow_agent(tmp_path, delay=0.01)
    net = cluster(1, agent)
    net.start_workers()
    link = net.pairs[0].agent
    sid = net.submit(tmp_path / "tests", "--step-timeout", "1.5", "--planning-timeout", "5")
    index_of = lambda h: h and h[0].rsplit("-", 1)[1]  # noqa: E731  (the job id ends with the episode index)
    short_cut = wait_until(lambda: index_of(holder(net.conn)), 60, "the first episode")
    link.cut()
    time.sleep(0.3)  # the fault's length (within the step deadline), not a synchronization
    link.restore()
    long_cut = wait_until(lambda: (i := index_of(holder(net.conn))) != short_cut and i, 60, "the next episode")
    time.sleep(0.3)  # into its steps, most likely; a cut while it plans is a timeout all the same
    link.cut()
    wait_until(lambda: net.conn.hexists(store.results_key(sid), long_cut), 60, "the cut episode's result")
    link.restore()
    assert net.wait_ended(sid, 120) == "finished"
    document = net.results(sid)
    cut_name = f"Test_0/Level_{long_cut}.pkl"
    check(document, layout, lambda name: "timeout" if name == cut_name else "completed")
    assert sum(e["outcome"] == "timeout" for e in document["episodes"]) == 1
    fault_report("the link between a worker and its agent cut for 0.3 s mid-episode (step deadline 1.5 s), "
                 "and cut past the deadline in the next episode",
                 "the short cut changes nothing (TCP resends); the long one makes that episode a timeout (-1.0) and "
                 "the agent is restarted once the link is back; every other score exact", None)
