"""Redis as hosts run it: behind Sentinel (a primary that fails over to a replica), restarted
without its data, and named by addresses people mistype.

Real servers throughout: Debian's redis-server and redis-sentinel on free loopback ports, a real
`flateval run` with its workers and agents, the scores compared with stepping the envs directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis as redis_lib

from broker import store
from broker.connection import BadRedisAddress, SentinelAddress, check_address, connect
from broker.embedded_redis import start_redis
from tests.conftest import free_port, slow_agent
from tests.test_faults import finish, first_result, start_run, wait_for
from tests.test_run import DO_NOTHING, check_against_direct, flateval

SERVICE = "flateval"


# ------------------------------------------------------------------------------ addresses


@pytest.mark.parametrize("url, expected", [
    ("redis+sentinel://127.0.0.1:26379/flateval", SentinelAddress((("127.0.0.1", 26379),), "flateval")),
    ("redis+sentinel://:s3cret@a:1,b:2/svc/3", SentinelAddress((("a", 1), ("b", 2)), "svc", 3, "s3cret")),
    ("redis+sentinel://[::1]:26379/svc", SentinelAddress((("::1", 26379),), "svc")),
])
def test_sentinel_addresses_parse(url, expected):
    assert check_address(url) == expected


@pytest.mark.parametrize("url", ["redis://:pw@host:6379/0", "rediss://host", "unix:///run/redis.sock?db=0"])
def test_plain_addresses_pass(url):
    assert check_address(url) is None


@pytest.mark.parametrize("url, why", [
    ("redis+sentinel://host/svc", "is not HOST:PORT"),
    ("redis+sentinel://host:26379/", "no SERVICE_NAME"),
    ("redis+sentinel://host:26379/svc/zero", "is not a number"),
    ("redsi://host:6379", "unknown scheme 'redsi'"),
    ("localhost:6379", "no scheme"),
    ("redis://host:port/0", "Port could not be cast"),
])
def test_bad_addresses_name_the_forms_accepted(url, why):
    with pytest.raises(BadRedisAddress) as caught:
        check_address(url)
    message = str(caught.value)
    assert why in message and "redis+sentinel://" in message and "\n" not in message


@pytest.mark.parametrize("command", [
    ["submit", "--test-set", "{test_set}"],
    ["status", "abc"],
    ["results", "abc"],
    ["cancel", "abc"],
    ["run", "--agent", DO_NOTHING, "--test-set", "{test_set}"],
])
@pytest.mark.parametrize("url", ["redis+sentinel://127.0.0.1/flateval", "redsi://127.0.0.1:6379"])
def test_every_redis_option_refuses_a_bad_address_in_one_line(command, url, small_test_set):
    done = flateval(*[a.format(test_set=small_test_set) for a in command], "--redis", url, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "bad Redis address" in lines[0] and "redis+sentinel://[:PASSWORD@]HOST:PORT" in lines[0]


# ------------------------------------------------------------------------------ Sentinel


def _replication(conn: redis_lib.Redis) -> dict:
    return conn.info("replication")


class ReplicationLink:
    """A loopback TCP relay between a replica and its primary that the test can cut: cut, the
    primary's writes no longer reach the replica (as in a partition, and unlike a stopped replica,
    whose kernel would still buffer them), so a failover loses them."""

    def __init__(self, target_port: int) -> None:
        import socket
        import threading

        self.target_port, self.cut = target_port, threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                downstream, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            self.sockets += [downstream, upstream]
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source, sink) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    break
                if not self.cut.is_set():
                    sink.sendall(data)
            except OSError:
                break
        for sock in (source, sink):
            try:
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        for sock in [self.listener, *self.sockets]:
            try:
                sock.close()
            except OSError:
                pass


class SentinelCluster:
    """A primary, one replica (through a `ReplicationLink`) and one sentinel (quorum 1) on
    loopback, each stopped by its pid."""

    def __init__(self, root: Path) -> None:
        self.primary = start_redis(port=free_port(), appendonly=True, directory=str(root / "primary"))
        self.replica = start_redis(port=free_port(), appendonly=True, directory=str(root / "replica"))
        self.link = ReplicationLink(self.primary.port)
        redis_lib.Redis(port=self.replica.port).replicaof("127.0.0.1", self.link.port)
        wait_for(lambda: _replication(redis_lib.Redis(port=self.replica.port)).get("master_link_status") == "up",
                 30, "the replica to sync")
        self.sentinel_port = free_port()
        conf = root / "sentinel" / "sentinel.conf"
        conf.parent.mkdir()
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndaemonize no\ndir {conf.parent}\n"
            f"logfile {conf.parent / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n")
        self.sentinel = subprocess.Popen([shutil.which("redis-sentinel"), str(conf)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        watcher = redis_lib.Redis(port=self.sentinel_port, socket_connect_timeout=0.5)
        wait_for(lambda: _try(lambda: watcher.sentinel_slaves(SERVICE)), 30, "the sentinel to see the replica")
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}"

    def primary_port(self) -> int:
        host, port = redis_lib.Redis(port=self.sentinel_port).sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def stop(self) -> None:
        self.sentinel.kill()
        self.sentinel.wait()
        self.link.close()
        for server in (self.primary, self.replica):
            server.stop()


def _try(probe):
    try:
        return probe()
    except (redis_lib.RedisError, OSError):
        return None


@pytest.fixture
def sentinel_cluster(tmp_path):
    if not shutil.which("redis-sentinel"):
        pytest.skip("no redis-sentinel on this machine (Debian: apt-get install redis-sentinel)")
    cluster = SentinelCluster(tmp_path / "redis")
    yield cluster
    cluster.stop()


def _slow_run(tmp_path: Path, test_set: Path, redis_url: str, delay: float):
    """`flateval run --workers 2` of a do-nothing agent `delay` s late each step, on `redis_url`;
    the process and where it writes its results."""
    agent, _ = slow_agent(tmp_path, delay=delay)
    out = tmp_path / "results.json"
    return start_run("--agent", agent, "--test-set", str(test_set), "--workers", "2", "--redis", redis_url,
                     "--output", str(out)), out


def test_failover_with_lost_writes_reruns_those_episodes(sentinel_cluster, small_test_set, tmp_path, fault_report):
    """The primary dies with results the replica never got (asynchronous replication): the
    sentinel promotes the replica, every process follows it, the episodes whose results were lost
    are played again, and every score is exact and counted once."""
    cluster = sentinel_cluster
    primary = redis_lib.Redis(port=cluster.primary.port)
    replica = redis_lib.Redis(port=cluster.replica.port)
    run, out = _slow_run(tmp_path, small_test_set, cluster.url, delay=0.01)
    try:
        sid = first_result(primary)
        key = store.results_key(sid)
        wait_for(lambda: replica.hlen(key) >= 1, 30, "the replica to have it")
        cluster.link.cut.set()  # the primary's writes stop reaching the replica
        wait_for(lambda: primary.info("replication")["master_repl_offset"]
                 > replica.info("replication")["slave_repl_offset"], 30, "the replica to fall behind")
        behind = replica.hlen(key)
        wait_for(lambda: primary.hlen(key) > behind, 60, "a result only the primary has")
        on_primary = primary.hlen(key)
        cluster.primary.process.kill()  # the primary dies with those writes
        cluster.primary.process.wait()
        killed_at = time.monotonic()
        lost = on_primary - replica.hlen(key)
        wait_for(lambda: _try(cluster.primary_port) == cluster.replica.port, 30, "the sentinel to promote the replica")
        promoted_s = time.monotonic() - killed_at
        document = finish(run, out, timeout_s=180)
        recovery = time.monotonic() - killed_at
    finally:
        run.kill()
    assert lost >= 1
    check_against_direct(document, small_test_set)
    assert len(document["episodes"]) == len(list(small_test_set.glob("*/*.pkl")))
    assert replica.hlen(store.results_key(sid)) == len(document["episodes"])  # counted once each
    status = flateval("status", sid, "--redis", cluster.url)
    assert status.returncode == 0 and "finished" in status.stdout, status.stderr
    fault_report(f"Redis primary killed behind Sentinel with {lost} result(s) not yet replicated",
                 f"the sentinel promoted the replica in {promoted_s:.1f} s; workers, `flateval run` and "
                 "`flateval status` followed it through the redis+sentinel:// address; the episodes whose results "
                 "were lost were re-run (their leases lapsed on the promoted replica); every score exact, "
                 "each counted once", recovery)


# ------------------------------------------------------------------------------ state lost


def test_redis_restarted_without_its_data_is_reported_not_scored(small_test_set, tmp_path, fault_report):
    port = free_port()
    server = start_redis(port=port, directory=str(tmp_path / "redis"))
    conn = redis_lib.Redis(port=port)
    run, out = _slow_run(tmp_path, small_test_set, server.url, delay=0.02)
    try:
        sid = first_result(conn)
        server.stop()  # its directory goes with it: it comes back empty
        server = start_redis(port=port, directory=str(tmp_path / "redis-empty"))
        restarted = time.monotonic()
        _, stderr = run.communicate(timeout=120)
        noticed = time.monotonic() - restarted
    finally:
        run.kill()
        server.stop()
    assert run.returncode != 0
    assert "lost the state of submission" in stderr and "Traceback" not in stderr, stderr
    if out.exists():  # a results document, if written, carries no score
        import json

        assert json.loads(out.read_text())["score"].get("mean_normalized_return") is None
    fault_report("Redis restarted without its data mid-run",
                 "`flateval run` says Redis lost the submission's state and ends without a score; "
                 "`flateval status` on that Redis says it holds no flateval data", noticed)


def test_status_on_a_redis_that_lost_everything_says_so(redis_url, redis_conn):
    done = flateval("status", "deadbeef", "--redis", redis_url)
    assert done.returncode == 1
    assert "holds no flateval data" in done.stderr and "state is lost" in done.stderr
    redis_conn.set(store.DATASET, 1)
    done = flateval("status", "deadbeef", "--redis", redis_url)
    assert done.stderr.strip() == "flateval: no submission deadbeef"


def test_connect_through_sentinel_reaches_the_primary(sentinel_cluster):
    conn = connect(sentinel_cluster.url)
    conn.set("k", "v")
    assert redis_lib.Redis(port=sentinel_cluster.primary.port).get("k") == b"v"
