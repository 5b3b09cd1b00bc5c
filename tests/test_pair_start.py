"""How fast a pair gets going and lets go (issue 23: start-up and the end are most of what
`flateval run` adds to a torch agent's own work): the handshake lands as soon as the agent binds, a
worker launches its agent before its own imports and stops it when it cannot go on, and a bridged
agent exits without tearing its interpreter down, its exit functions run and its status kept."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from broker.connection import RedisUnreachable
from env_worker.agent_process import AgentStartError, wait_for_handshake
from tests.conftest import free_port
from tests.test_run import flateval

LATE_BINDER = """
import sys, time
from agent_bridge import protocol as wire
from agent_bridge.router_endpoint import RouterEndpoint

time.sleep(float(sys.argv[1]))  # an interpreter importing torch, a model loading
endpoint = RouterEndpoint(log=lambda text: None)
bound = time.monotonic()
request = endpoint.receive()
print(f"{time.monotonic() - bound:.4f}", flush=True)
endpoint.reply(request, wire.hello_reply("late", {"builder": "none"}))
time.sleep(30)
"""


def _late_binder(tmp_path: Path, delay_s: float) -> tuple[subprocess.Popen, str]:
    script = tmp_path / "late.py"
    script.write_text(LATE_BINDER)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    process = subprocess.Popen([sys.executable, str(script), str(delay_s)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "FLATEVAL_AGENT_BIND": endpoint})
    return process, endpoint


def test_the_handshake_lands_as_soon_as_a_slow_agent_binds(tmp_path):
    """An agent that binds 1.5 s after it starts: the worker's hello, sent at once, reaches it within
    a few reconnect intervals (10 ms) of its bind. Asking again on a timer, or ZeroMQ's reconnect
    back-off (up to 500 ms), cost up to half a second of every start before."""
    process, endpoint = _late_binder(tmp_path, 1.5)
    try:
        started = time.monotonic()
        wait_for_handshake(endpoint, 30, exited=lambda: None if process.poll() is None else "exited")
        assert time.monotonic() - started >= 1.5
        bind_to_hello = float(process.stdout.readline())
    finally:
        process.kill()
        process.wait()
    assert bind_to_hello < 0.15, f"the hello reached the agent {bind_to_hello:.3f} s after it bound"


def test_the_handshake_gives_up_as_soon_as_the_agent_exits(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    try:
        started = time.monotonic()
        with pytest.raises(AgentStartError, match="gone"):
            wait_for_handshake(f"tcp://127.0.0.1:{free_port()}", 30,
                               exited=lambda: None if process.poll() is None else "gone")
        assert time.monotonic() - started < 5
    finally:
        process.kill()
        process.wait()


def test_a_worker_that_cannot_reach_redis_stops_the_agent_it_launched(tmp_path):
    """The agent starts first (its start-up overlaps the worker's); a worker that then cannot go on
    says why in one line and leaves nothing running."""
    marker = f"flateval-test-orphan-{os.getpid()}"
    script = tmp_path / "agent.py"
    script.write_text(f"import time  # {marker}\ntime.sleep(60)\n")
    missing = tmp_path / "no-redis.sock"
    done = flateval("worker", "--redis", f"unix://{missing}", "--queue", "q", "--no-sandbox",
                    "--agent-command", f"{sys.executable} {script}")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Redis" in lines[0], done.stderr
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert left == [], f"the agent outlived its worker: {left}"


def test_a_slot_template_is_for_agents_someone_else_runs():
    done = flateval("worker", "--redis", "unix:///nonexistent.sock", "--queue", "q", "--agent-endpoint",
                    "tcp://agent-{slot}:8086", "--agent-command", "true")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "flateval: an --agent-endpoint with {slot} names agents someone else runs: leave it out with "
        "--agent-command or --agent-image"]


SPAWN_WATCH = """
import sys

loaded_at_spawn = []  # which of the heavy libraries the command had loaded when it spawned each worker


def hook(event, args):
    if event == "subprocess.Popen" and "worker" in list(args[1] or []):
        loaded_at_spawn.append(sorted(m for m in ("redis", "rq", "prometheus_client") if m in sys.modules))


sys.addaudithook(hook)
from flateval.cli import main

try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print(loaded_at_spawn)
"""


def test_flateval_run_spawns_its_pairs_before_it_loads_redis_rq_or_prometheus(tmp_path, small_test_set):
    """The agents' start-up is the longest wait of a run: their workers are spawned first (they wait
    for the embedded Redis, started right after), and the command loads its heavy libraries while
    the agents start. Before, the pairs came after those imports and the Redis (0.1 s later)."""
    watcher = tmp_path / "watch.py"
    watcher.write_text(SPAWN_WATCH)
    done = subprocess.run([sys.executable, str(watcher), "run", "--agent",
                           f"{sys.executable} -m agent_bridge.examples.do_nothing", "--test-set", str(small_test_set),
                           "--workers", "2", "--output", str(tmp_path / "results.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[[], []]"


def test_a_worker_waits_for_a_redis_that_starts_after_it(tmp_path):
    """`connect(url, wait_s)`: the worker of `flateval run` is spawned before its Redis is up."""
    from broker.connection import connect
    from broker.embedded_redis import socket_url, start_redis

    url = socket_url(tmp_path / "redis")
    outcome: list = []
    waiting = threading.Thread(target=lambda: outcome.append(_connect_or_error(connect, url, 30)))
    waiting.start()
    server = start_redis(directory=str(tmp_path / "redis"))
    try:
        waiting.join(30)
        assert server.url == url
        assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
        assert outcome[0].ping()
        outcome[0].close()
    finally:
        server.stop()
    with pytest.raises(RedisUnreachable, match="cannot reach Redis"):  # without a wait: at once, as before
        connect(url)


def test_a_worker_does_not_wait_out_a_wrong_password(tmp_path):
    from broker.connection import connect
    from broker.embedded_redis import start_redis

    server = start_redis(directory=str(tmp_path / "redis"), password="right")
    try:
        started = time.monotonic()
        with pytest.raises(RedisUnreachable, match="cannot reach Redis"):
            connect(server.url.replace(":right@", ":wrong@"), wait_s=30)
        assert time.monotonic() - started < 5
    finally:
        server.stop()


def _connect_or_error(connect, url: str, wait_s: float):
    try:
        return connect(url, wait_s=wait_s)
    except Exception as exc:  # noqa: BLE001  (the test reads it)
        return exc


PYPLOT_CHECK = """
import sys, types

def deferred():
    module = sys.modules.get("matplotlib.pyplot")
    return module is not None and type(module) is not types.ModuleType  # type() does not load it

print("loaded by flatland, deferred:", deferred())
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
plt.figure().savefig(sys.argv[1])  # a script that plots gets the real module
print("after use, deferred:", deferred())
"""


@pytest.mark.parametrize("bridge", ["flatland_remote", "process"])
def test_flatlands_pyplot_loads_at_its_first_use_not_at_the_agents_start(tmp_path, bridge):
    """flatland imports matplotlib.pyplot with its rail env: 0.2-0.3 s of every agent's and worker's
    start, for a module no episode uses. It is bound at once and loaded when first used."""
    script = tmp_path / "plots.py"
    script.write_text(PYPLOT_CHECK)
    if bridge == "flatland_remote":  # a participant's FlatlandRemoteClient script, as the bridge runs it
        command = [sys.executable, "-m", "agent_bridge.flatland_remote", str(script), str(tmp_path / "plot.png")]
    else:  # a worker, once its warm-up loaded flatland
        command = [sys.executable, "-c", "import runpy, sys; from env_worker.flatland_env import warm_up; warm_up(); "
                   "import flatland.envs.rail_env; sys.argv = sys.argv[1:]; "
                   "runpy.run_path(sys.argv[0], run_name='__main__')", str(script), str(tmp_path / "plot.png")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["loaded by flatland, deferred: True", "after use, deferred: False"]
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_a_worker_loads_flatland_without_pyplot(redis_url, tmp_path):
    """A real worker, from its start to the end of a burst over an empty queue: it loads flatland's
    rail env (its warm-up) and never runs pyplot (whose figure module pyplot would import)."""
    done = flateval("worker", "--redis", redis_url, "--queue", f"empty-{os.getpid()}", "--burst", "--no-sandbox",
                    "--agent-command", f"{sys.executable} -m agent_bridge.examples.do_nothing",
                    "--agent-log", str(tmp_path / "agent.log"), env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "flatland.envs.rail_env" in imported
    assert "matplotlib.figure" not in imported


WORKER_EPISODE = """
import sys, types
from env_worker.flatland_env import FlatlandEnv, warm_up

warm_up()  # as a worker does first
env = FlatlandEnv(sys.argv[1], seed=1001)
env.serve_replica()
env.reset()
while not env.step({}).done:
    pass
env.score_inputs()
env.release()  # clears flatland's caches: it looks through flatland's modules, where pyplot is bound
print(type(sys.modules["matplotlib.pyplot"]) is not types.ModuleType)
"""


def test_a_workers_episode_never_loads_pyplot(tmp_path, small_test_set):
    """Not at its end either: looking through flatland's modules for its caches once asked the
    deferred module what it is, which loaded it (0.15 s at the end of the worker's first episode)."""
    script = tmp_path / "episode.py"
    script.write_text(WORKER_EPISODE)
    done = subprocess.run([sys.executable, str(script), str(small_test_set / "Test_0" / "Level_0.pkl")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"]


SCRIPT_WITH_LAST_WORDS = """
import atexit, os, sys, threading, time


class Model:  # what a teardown would finalize, object by object
    def __del__(self):
        os.write(1, b"torn down\\n")


model = Model()
atexit.register(lambda: print("exit function ran", flush=True))
worker = threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished")))
worker.start()
print("buffered, never flushed by the script")
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("bridge", ["agent_bridge.flatland_remote", "agent_bridge.flatland_policy"])
def test_a_bridged_agent_exits_with_its_status_and_its_last_words(tmp_path, bridge):
    """No interpreter teardown (torch's takes half a second: no object is finalized), but everything
    one can see of an exit: non-daemon threads joined, exit functions run, stdout flushed, the
    script's status."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_WITH_LAST_WORDS)
    if bridge == "agent_bridge.flatland_remote":
        args = [str(script), "3"]
    else:  # a Policy module whose import is the whole program: the same last words
        (tmp_path / "last_words.py").write_text(SCRIPT_WITH_LAST_WORDS.replace("int(sys.argv[1])", "3"))
        args = ["--policy-pkg", "last_words", "--policy-cls", "Nothing"]
    done = subprocess.run([sys.executable, "-m", bridge, *args], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 3, done.stderr
    out = done.stdout.splitlines()
    assert out == ["buffered, never flushed by the script", "thread finished", "exit function ran"], out


def test_an_uncaught_exception_is_status_1_with_its_traceback(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        print("before", end="")
        raise ValueError("the participant's bug")
    """))
    done = subprocess.run([sys.executable, "-m", "agent_bridge.flatland_remote", str(script)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout == "before"
    assert done.stderr.rstrip().endswith("ValueError: the participant's bug")


def _tgkill(pid: int, tid: int, signum: int) -> None:
    """A signal to one thread of another process (what the kernel may do with a process's SIGTERM)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(234, pid, tid, signum) != 0:  # SYS_tgkill on x86_64
        raise OSError(ctypes.get_errno(), "tgkill")


def _threads_taking(pid: int, signum: int) -> list[int]:
    """The threads of `pid`, other than its main one, that do not block `signum`."""
    taking = []
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        if tid == pid:
            continue
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        blocked = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk")), 16)
        if not blocked & (1 << (signum - 1)):
            taking.append(tid)
    return taking


SERVING = """
import numpy  # its BLAS starts threads of its own as it loads
from agent_bridge import serve
from agent_bridge.examples.do_nothing import DoNothing
serve(DoNothing())
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="tgkill's syscall number is x86_64's")
def test_a_served_agent_stops_when_another_thread_takes_the_sigterm(tmp_path):
    """The kernel gives a process's SIGTERM to any thread that does not block it; numpy's BLAS pool
    does not. An agent waiting for its next request in ZeroMQ sat out its stop grace (3 s) then."""
    script = tmp_path / "serving.py"
    script.write_text(SERVING)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    process = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "FLATEVAL_AGENT_BIND": endpoint, "OPENBLAS_NUM_THREADS": "2"})
    try:
        wait_for_handshake(endpoint, 30)
        others = _threads_taking(process.pid, 15)
        assert others, "no thread but the main one takes SIGTERM: nothing to show"
        started = time.monotonic()
        _tgkill(process.pid, others[0], 15)
        _tgkill(process.pid, others[0], 15)  # and again, as a launcher and its worker both stop it
        process.wait(5)
        took = time.monotonic() - started
    finally:
        process.kill()
        stderr = process.communicate()[1]
    assert took < 1.0, f"the agent took {took:.2f} s to stop"
    assert "Traceback" not in stderr, stderr


def test_an_idle_worker_leaves_stop_signals_to_its_main_thread_and_stops_at_once(tmp_path, redis_url):
    """A worker waits for jobs in a Redis pop of up to a second, returning between two pops to look
    for submissions: a SIGTERM taken by another thread (RQ's listener, numpy's BLAS pool), or one
    landing as RQ's listener thread starts, waited out that second."""
    pidfile = tmp_path / "agent.pid"
    stops = []
    for attempt in range(4):
        pidfile.unlink(missing_ok=True)
        worker = subprocess.Popen(
            [sys.executable, "-m", "flateval", "worker", "--redis", redis_url, "--queue", f"idle-{os.getpid()}",
             "--agent-command", f"{sys.executable} -m agent_bridge.examples.do_nothing", "--agent-pidfile",
             str(pidfile), "--no-sandbox"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not pidfile.exists():
                assert worker.poll() is None and time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(0.3 + 0.27 * attempt)  # somewhere in the worker's one-second idle cycle
            assert _threads_taking(worker.pid, 15) == []
            started = time.monotonic()
            worker.terminate()
            worker.wait(10)
            stops.append(time.monotonic() - started)
        finally:
            worker.kill()
            worker.wait()
    assert max(stops) < 0.7, [f"{s:.2f}" for s in stops]
