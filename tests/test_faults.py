"""Faults injected with real processes: real Redis, real rq workers, real agents.

Each test states a fault, checks nothing is lost or counted twice, and records what it measured
for docs/reliability.md (`fault_report`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as redis_lib

from broker import cleanup, reaper, store
from broker.embedded_redis import start_redis
from core.process_identity import live_group_members
from tests.conftest import free_port, slow_agent
from tests.test_run import DO_NOTHING, FLATEVAL, check_against_direct, flateval, leftover_processes

def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling real processes and Redis for a state they reach on their own


def first_result(conn: redis_lib.Redis, timeout_s: float = 90) -> str:
    """The id of the first submission with a stored result, once there is one."""
    return wait_for(lambda: next((k.decode().split(":")[2] for k in conn.keys("flateval:submission:*:results")),
                                 None), timeout_s, "a first result")


def leases(conn: redis_lib.Redis) -> dict[str, str]:
    """Running episode jobs and the workers holding them."""
    return {k.decode().removeprefix("flateval:lease:"): reaper.lease_owner((conn.get(k) or b"").decode())
            for k in conn.keys("flateval:lease:*")}


def stop_process(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM (a worker's warm shutdown), then SIGKILL if it does not end in time."""
    process.terminate()
    try:
        process.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


def _kill_group(pgid: int) -> bool:
    """Kill a process group; True if a live process (not a zombie waiting for init) was in it."""
    live = live_group_members(pgid) > 0
    if live:
        os.killpg(pgid, signal.SIGKILL)
    return live


def pids_of(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def agent_pids(token: str) -> list[int]:
    """The agent's Python process itself (not its shell, nor the worker naming it in --agent-command)."""
    pids = []
    for pid in pids_of(token):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if argv[0].decode() == sys.executable and argv[1].decode().endswith(f"{token}.py"):
            pids.append(pid)
    return pids


def start_run(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*FLATEVAL, "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(run: subprocess.Popen, out: Path, timeout_s: float = 180) -> dict:
    _, stderr = run.communicate(timeout=timeout_s)
    assert run.returncode == 0, stderr
    return json.loads(out.read_text())


def test_worker_killed_mid_episode_is_rerun_and_scored_once(redis_url, redis_conn, small_test_set, tmp_path,
                                                            fault_report):
    agent, _ = slow_agent(tmp_path)
    out = tmp_path / "results.json"
    run = start_run("--agent", agent, "--test-set", str(small_test_set), "--workers", "2", "--redis", redis_url,
                    "--output", str(out))
    try:
        job_id, owner = wait_for(lambda: next(((j, o) for j, o in leases(redis_conn).items()
                                               if o.startswith("pair-0-")), None), 60, "pair 0 to start an episode")
        [pid] = pids_of(f"--name {owner}")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        sid = owner.split("flateval-", 1)[1]
        index = job_id.rsplit("-", 1)[1]
        wait_for(lambda: redis_conn.hexists(store.results_key(sid), index), 90, "the killed episode's re-run")
        recovery = time.monotonic() - killed_at
        document = finish(run, out)
    finally:
        run.kill()
    check_against_direct(document, small_test_set)
    files = [e["env_file"] for e in document["episodes"]]
    assert len(files) == len(set(files)) == 4
    assert recovery < 60
    fault_report("env worker (and its agent) SIGKILLed mid-episode, `flateval run --workers 2`",
                 "its lease expires, the reaper requeues the episode, `flateval run` respawns the pair; "
                 "the episode is scored once; scores equal an undisturbed run", recovery)


def test_agent_killed_mid_episode_costs_that_episode(redis_url, redis_conn, small_test_set, tmp_path, fault_report):
    agent, token = slow_agent(tmp_path)
    out = tmp_path / "results.json"
    run = start_run("--agent", agent, "--test-set", str(small_test_set), "--workers", "1", "--redis", redis_url,
                    "--output", str(out))
    try:
        job_id = wait_for(lambda: next(iter(leases(redis_conn)), None), 60, "an episode to start")
        [pid] = agent_pids(token)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        sid, index = job_id.removeprefix("flateval-").rsplit("-", 1)
        wait_for(lambda: redis_conn.hexists(store.results_key(sid), index), 30, "the killed episode's result")
        noticed = time.monotonic() - killed_at
        document = finish(run, out)
    finally:
        run.kill()
    outcomes = [e["outcome"] for e in document["episodes"]]
    killed = document["episodes"][int(index)]
    assert killed["outcome"] == "agent_error" and "disconnected" in killed["error"]
    assert outcomes.count("completed") == 3 and document["status"] == "finished"
    assert "restarting agent" in "".join(document["agent_logs"].values())
    assert noticed < 1.0
    fault_report("agent process SIGKILLed mid-episode", "that episode is `agent_error` (-1.0, \"agent "
                 "disconnected\") at once, the pair restarts its agent, later episodes score normally", noticed)


def test_redis_restart_mid_run_loses_nothing(small_test_set, tmp_path, fault_report):
    port = free_port()
    data = tmp_path / "redis-data"
    server = start_redis(port=port, appendonly=True, directory=str(data))
    url = server.url
    conn = redis_lib.Redis.from_url(url)
    agent, _ = slow_agent(tmp_path, delay=0.01)
    out = tmp_path / "results.json"
    run = start_run("--agent", agent, "--test-set", str(small_test_set), "--workers", "2", "--redis", url,
                    "--output", str(out))
    try:
        sid = first_result(conn, 60)
        stored = conn.hlen(store.results_key(sid))
        server.stop(keep_data=True)
        server = start_redis(port=port, appendonly=True, directory=str(data))
        restarted_at = time.monotonic()
        conn = redis_lib.Redis.from_url(url)
        assert conn.hlen(store.results_key(sid)) >= stored  # the append-only file kept what was stored
        wait_for(lambda: conn.hlen(store.results_key(sid)) > stored, 60, "a result after the restart")
        recovery = time.monotonic() - restarted_at
        document = finish(run, out)
    finally:
        run.kill()
        server.stop()
    check_against_direct(document, small_test_set)
    fault_report("Redis restarted mid-run (append-only file on)",
                 "workers and `flateval run` retry with back-off and carry on; every result is kept", recovery)


def test_cancel_stops_running_episodes_within_a_step(redis_url, redis_conn, small_test_set, tmp_path, fault_report):
    agent, _ = slow_agent(tmp_path, delay=0.05)
    sid = flateval("submit", "--redis", redis_url, "--test-set", str(small_test_set)).stdout.strip()
    worker = subprocess.Popen([*FLATEVAL, "worker", "--redis", redis_url, "--queue", f"flateval-{sid}",
                               "--agent-command", agent, "--agent-log", str(tmp_path / "agent.log")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: leases(redis_conn), 60, "an episode to start")
        started = time.monotonic()
        done = flateval("cancel", sid, "--redis", redis_url)
        assert done.returncode == 0 and "3 queued episodes removed" in done.stdout, done.stdout + done.stderr
        wait_for(lambda: not leases(redis_conn), 10, "the running episode to stop")
        stopped = time.monotonic() - started
    finally:
        stop_process(worker)
    document = json.loads(flateval("results", sid, "--redis", redis_url).stdout)
    assert document["status"] == "cancelled" and document["episodes"] == []
    assert redis_conn.llen(f"rq:queue:flateval-{sid}") == 0
    assert stopped < 5.0  # one step deadline
    fault_report("`flateval cancel` while an episode runs (agent 50 ms/step)",
                 "queued episodes removed; the running one stops at its next step; no score", stopped)


def test_same_episode_delivered_twice_is_stored_once(redis_url, redis_conn, small_test_set, tmp_path, fault_report):
    from rq import Queue
    from rq.job import Job
    from rq.serializers import JSONSerializer

    sid = flateval("submit", "--redis", redis_url, "--test-set", str(small_test_set)).stdout.strip()
    queue = Queue(f"flateval-{sid}", connection=redis_conn, serializer=JSONSerializer)
    original = Job.fetch(f"flateval-{sid}-0", connection=redis_conn, serializer=JSONSerializer)
    queue.enqueue("env_worker.job.run_episode_job", original.args[0], job_id=f"flateval-{sid}-0-again",
                  result_ttl=0)
    done = subprocess.run([*FLATEVAL, "worker", "--redis", redis_url, "--queue", f"flateval-{sid}", "--burst",
                           "--agent-command", DO_NOTHING, "--agent-log", str(tmp_path / "agent.log")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    document = json.loads(flateval("results", sid, "--redis", redis_url).stdout)
    assert redis_conn.hlen(store.results_key(sid)) == 4
    check_against_direct(document, small_test_set)
    fault_report("the same episode job delivered twice", "one stored result (HSET per episode index); the "
                 "score is unchanged", None)


def test_load_ten_submissions_on_four_pairs_and_redis_stays_bounded(redis_url, redis_conn, thirty_env_set,
                                                                     tmp_path, fault_report):
    baseline = redis_conn.info("memory")["used_memory"]
    workers = [subprocess.Popen([*FLATEVAL, "worker", "--redis", redis_url, "--agent-command", DO_NOTHING,
                                 "--agent-log", str(tmp_path / f"agent-{i}.log"), "--name", f"load-{i}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(4)]
    started = time.monotonic()
    try:
        sids = [flateval("submit", "--redis", redis_url, "--test-set", str(thirty_env_set), "--phase",
                         "debug").stdout.strip() for _ in range(10)]
        for sid in sids:
            wait_for(lambda sid=sid: redis_conn.hget(store.submission_key(sid), "status") == b"finished", 300,
                     f"{sid} to finish")
        elapsed = time.monotonic() - started
        peak = redis_conn.info("memory")["used_memory"]
        for sid in sids:
            assert redis_conn.hlen(store.results_key(sid)) == 28
        assert cleanup.cleanup_ended(redis_conn, older_than_s=0, ttl_s=1) == 10
        wait_for(lambda: not redis_conn.exists(*(store.results_key(s) for s in sids)), 10, "results to expire")
        cleanup.cleanup_ended(redis_conn, older_than_s=0)
        after = redis_conn.info("memory")["used_memory"]
        rq_keys = [k for k in redis_conn.keys("rq:*") if b"flateval-" in k]
        left = sorted(k.decode() for k in redis_conn.keys("*"))
    finally:
        for worker in workers:
            stop_process(worker)
    assert rq_keys == []
    assert redis_conn.zcard(store.SUBMISSIONS) == 0
    # nothing of the submissions is left; what remains is RQ's own bookkeeping of the live workers
    # and the mark that this Redis holds flateval's data (how a Redis restarted empty is told apart)
    assert [k for k in left if "flateval" in k and k != store.DATASET] == [], left
    assert after < peak and after - baseline < 512_000, (baseline, peak, after)
    fault_report("load: 10 submissions x 28 episodes at once on 4 worker pairs",
                 f"all 280 episodes finish in {elapsed:.0f} s; Redis memory {baseline / 1e6:.2f} MB -> "
                 f"{peak / 1e6:.2f} MB at the peak -> {after / 1e6:.2f} MB after cleanup, no flateval or RQ key "
                 "left but the live workers'", None)


def _rss_kb(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM): what a leak raises. The current resident
    size also moves when the allocator hands memory back to the system and takes it again (measured:
    220 MB, 203 MB, 220 MB at episodes 150, 200, 300 of a flat worker), which reads as growth."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_worker_does_not_grow_over_500_episodes(redis_url, redis_conn, small_test_set, tmp_path, fault_report):
    many = tmp_path / "many"
    smallest = min(small_test_set.glob("*/*.pkl"), key=lambda p: p.stat().st_size)
    for i in range(500):
        test, level = divmod(i, 10)
        (many / f"Test_{test}").mkdir(parents=True, exist_ok=True)
        shutil.copy(smallest, many / f"Test_{test}" / f"Level_{level}.pkl")
    sid = flateval("submit", "--redis", redis_url, "--test-set", str(many)).stdout.strip()
    pidfile = tmp_path / "agent.pid"
    with open(tmp_path / "worker.log", "w") as log:  # a line per episode: a pipe nobody reads would fill up
        worker = subprocess.Popen([*FLATEVAL, "worker", "--redis", redis_url, "--queue", f"flateval-{sid}",
                                   "--agent-command", DO_NOTHING, "--agent-log", str(tmp_path / "agent.log"),
                                   "--agent-pidfile", str(pidfile)],
                                  stdout=subprocess.DEVNULL, stderr=log, text=True)
    try:
        wait_for(lambda: redis_conn.hlen(store.results_key(sid)) >= 200, 120, "200 episodes")
        rss_200, fds_200 = _rss_kb(worker.pid), len(os.listdir(f"/proc/{worker.pid}/fd"))
        wait_for(lambda: redis_conn.hget(store.submission_key(sid), "status") == b"finished", 300, "500 episodes")
        rss_2000, fds_2000 = _rss_kb(worker.pid), len(os.listdir(f"/proc/{worker.pid}/fd"))
        worker.terminate()  # idle now, blocked on its empty queue: SIGTERM stops it at once, agent too
        worker.communicate(timeout=30)
    finally:
        stop_process(worker)
        agent_left = _kill_group(int(pidfile.read_text())) if pidfile.exists() else False
    assert worker.returncode == 0
    assert not agent_left, "the worker left its agent running"
    assert redis_conn.hlen(store.results_key(sid)) == 500
    assert fds_2000 <= fds_200, (fds_200, fds_2000)
    assert rss_2000 - rss_200 < 8_000, (rss_200, rss_2000)
    fault_report("500 episodes on one worker", f"peak RSS {rss_200 / 1024:.1f} MB after 200 -> {rss_2000 / 1024:.1f} MB "
                 f"after 500; open file descriptors {fds_200} -> {fds_2000}", None)


def test_interrupted_run_is_cancelled(small_test_set, tmp_path, redis_url, redis_conn, fault_report):
    agent, token = slow_agent(tmp_path, delay=0.02)
    out = tmp_path / "results.json"
    run = start_run("--agent", agent, "--test-set", str(small_test_set), "--workers", "2", "--redis", redis_url,
                    "--output", str(out))
    wait_for(lambda: leases(redis_conn), 60, "an episode to start")
    run.send_signal(signal.SIGTERM)
    interrupted = time.monotonic()
    run.communicate(timeout=60)
    stopped = time.monotonic() - interrupted
    sid = redis_conn.zrange(store.SUBMISSIONS, -1, -1)[0].decode()
    assert redis_conn.hget(store.submission_key(sid), "status") == b"cancelled"
    assert leftover_processes(token) == [] and leftover_processes(f"flateval-{sid}") == []
    assert json.loads(out.read_text())["status"] == "cancelled"
    fault_report("`flateval run` interrupted (SIGTERM or SIGINT, a Ctrl-C to its whole process group)",
                 "the submission is `cancelled`; its results document keeps the episodes that finished, without "
                 "a score; every process it started is stopped by pid", stopped)


# ------------------------------------------------------------------------------------ security

ENV_SPY = """
import json, os, sys
from agent_bridge import serve
messages = []
class Spy:
    def reset(self, info):
        messages.append(repr(info))
    def act(self, obs, info):
        return {}
    def end(self, result):
        with open(os.path.join(os.path.dirname(__file__), "spy.json"), "w") as fh:
            json.dump({"env": dict(os.environ), "argv": sys.argv, "messages": messages}, fh)
serve(Spy())
"""


def test_agent_never_sees_redis_credentials(small_test_set, tmp_path, fault_report):
    server = start_redis(port=free_port(), password="s3cret-pw-xyz")
    script = tmp_path / "spy.py"
    script.write_text(ENV_SPY)
    try:
        done = flateval("run", "--agent", f"{sys.executable} {script}", "--test-set", str(small_test_set),
                        "--workers", "1", "--redis", server.url,
                        env={"FLATEVAL_REDIS_URL": server.url, "REDIS_PASSWORD": "s3cret-pw-xyz"}, cwd=tmp_path)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    spy = (tmp_path / "spy.json").read_text()
    assert "s3cret-pw-xyz" not in spy
    seen = json.loads(spy)
    assert not [k for k in seen["env"] if "REDIS" in k.upper()]
    fault_report("agent looks for Redis credentials (environment, arguments, messages)",
                 "none there: the agent's environment is stripped of every REDIS/RQ/FLATEVAL variable", None)


def test_curve_encrypted_link(small_test_set, tmp_path, redis_url, fault_report):
    from env_worker.agent_link import AgentLink
    from env_worker.agent_process import AgentProcess
    from env_worker.episode import run_episode
    from tests.test_episode import spec_for

    agent = AgentProcess(DO_NOTHING, tmp_path / "curve.log", curve=True)
    keyed = AgentLink(agent.endpoint, curve_server_key=agent.curve_public_key)
    unkeyed = AgentLink(agent.endpoint)
    try:
        agent.start(30)
        result = run_episode(spec_for(small_test_set), keyed)
        assert result.outcome == "completed"
        plain = run_episode(spec_for(small_test_set, planning_timeout_s=0.5), unkeyed)
        # no key, no talk: the handshake fails (named as such when ZeroMQ reports it in time)
        assert plain.outcome in ("agent_error", "timeout") and plain.normalized_return == -1.0
    finally:
        keyed.close()
        unkeyed.close()
        agent.stop()
    out = tmp_path / "results.json"
    done = flateval("run", "--agent", DO_NOTHING, "--test-set", str(small_test_set), "--workers", "1", "--curve",
                    "--redis", redis_url, "--output", str(out))
    assert done.returncode == 0, done.stderr
    check_against_direct(json.loads(out.read_text()), small_test_set)
    fault_report("plain client talks to a CURVE-keyed agent", "no message gets through: the episode fails "
                 f"(`{plain.outcome}`: {plain.error}); with the agent's key the episode completes", None)


def test_rediss_with_password_end_to_end(small_test_set, tmp_path, fault_report):
    binary = shutil.which("redis-server", path="/usr/bin:/usr/local/bin")
    openssl = shutil.which("openssl")
    if not binary or not openssl:
        pytest.skip("cannot run: needs a TLS-capable redis-server (Debian `redis-server`) and openssl")
    certs = tmp_path / "tls"
    certs.mkdir()
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(certs / "key.pem"), "-out", str(certs / "cert.pem")],
                   check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen([binary, "--port", "0", "--tls-port", str(port), "--tls-cert-file",
                               str(certs / "cert.pem"), "--tls-key-file", str(certs / "key.pem"),
                               "--tls-ca-cert-file", str(certs / "cert.pem"), "--tls-auth-clients", "no",
                               "--requirepass", "tls-pw", "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://:tls-pw@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={certs / 'cert.pem'}"
    try:
        wait_for(lambda: server.poll() is not None or _pings(url), 20, "the TLS Redis to answer")
        if server.poll() is not None:
            pytest.skip(f"cannot run: {binary} does not start with TLS (built without it)")
        out = tmp_path / "results.json"
        done = flateval("run", "--agent", DO_NOTHING, "--test-set", str(small_test_set), "--workers", "1",
                        "--redis", url, "--output", str(out))
        assert done.returncode == 0, done.stderr
        check_against_direct(json.loads(out.read_text()), small_test_set)
        wrong = flateval("run", "--agent", DO_NOTHING, "--test-set", str(small_test_set), "--redis",
                         url.replace("tls-pw", "wrong"))
        assert wrong.returncode != 0 and "***@" in wrong.stderr and "wrong" not in wrong.stderr
    finally:
        server.terminate()
        server.wait(10)
    fault_report("Redis over TLS (rediss://) with a password", "works end to end; a wrong password is one "
                 "line, with the credentials redacted", None)


def _pings(url: str) -> bool:
    try:
        return bool(redis_lib.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis_lib.RedisError, OSError):
        return False
