"""The local sandbox, tried as a hostile participant would, through real `flateval run`/`worker` processes.

One `flateval run` on one worker plays eleven episodes: the even ones as a good do-nothing agent, the
odd ones as an attack (reach Redis and loopback, read and write the test set, look for the Redis
URL in /proc, read another agent's files, allocate past the memory limit, fork without end, spin
on every core). Each attack must end its episode as a clean `agent_error` with its findings (the
agent raises them), the worker must carry on, and the good episodes must score exactly what
stepping the env directly scores. Where this machine cannot build a fence, the test skips with the
reason the start-up line printed. Traffic goes to loopback only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent_bridge.protocol import ERROR_MESSAGE_CHARS
from env_worker.agent_process import AgentProcess
from env_worker.sandbox import SandboxSpec, parse_line, parse_memory
from env_worker.sandbox.environment import sandboxed_environment
from env_worker.sandbox.report import FENCES, Report
from env_worker.sandbox.spec import format_bytes, format_cores
from tests.conftest import free_port
from tests.test_episode import direct_normalized_return
from tests.test_faults import wait_for
from tests.test_run import DO_NOTHING, FLATEVAL, check_against_direct, flateval

MEMORY = "256Mi"
PIDS = 64
CPUS = 0.5
DISK = "32Mi"
ATTACKS = {1: "network", 3: "files", 5: "memory", 7: "fork_bomb", 9: "spin", 11: "disk"}  # test number -> attack
EPISODES = 13

HOSTILE = r'''
import errno, json, os, socket, sys, time
from agent_bridge import serve


def attempt(action):
    """'ok: <what it got>' or 'refused: <why>'."""
    try:
        return "ok: " + repr(action())[:60]
    except BaseException as exc:
        return f"refused: {type(exc).__name__}: {exc}"[:90]


def found(**what):
    raise RuntimeError("REPORT " + json.dumps(what, default=str))


def read(path):
    with open(path, "rb") as fh:
        return len(fh.read())


def run_dirs():
    """The run's own directory, found where an attacker finds it: its mount table names what is
    hidden. Counts and a few examples: a report bounded whatever the machine's /tmp holds."""
    with open("/proc/self/mountinfo") as fh:
        names = sorted({word for word in fh.read().split() if "/flateval-run-" in word})
    results = [attempt(lambda d=d: os.listdir(d)) for d in names]
    listed = [r for r in results if not r.startswith("refused")]
    return {"found": len(results), "listed": len(listed), "examples": (listed or results)[:3]}


def network():
    def connect(host, port):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect((host, port))
            return "connected"
    def unix(path):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(path)
            return "connected"
    out = {f"{h}:{p}": attempt(lambda h=h, p=p: connect(h, p)) for h, p in CONFIG["targets"]}
    out["other agent's socket"] = attempt(lambda: unix(CONFIG["other_socket"]))
    found(**out)


def files():
    out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "cwd": os.getcwd(),
           "env": sorted(os.environ), "home": os.environ.get("HOME")}
    info = os.stat(".")
    out["cwd mode"], out["cwd owner"] = oct(info.st_mode & 0o777), info.st_uid
    reads = [attempt(lambda p=p: read(p)) for p in CONFIG["test_files"]]
    out["read test set"] = {"ok": sum(r.startswith("ok") for r in reads), "of": len(reads), "first": reads[0]}
    out["list test set"] = attempt(lambda: os.listdir(CONFIG["test_set"]))
    out["write test set"] = attempt(lambda: open(os.path.join(CONFIG["test_set"], "planted.txt"), "w").write("x"))
    out["append to a level"] = attempt(lambda: open(CONFIG["test_files"][0], "ab").write(b"x"))
    out["bundled test sets"] = attempt(lambda: os.listdir(CONFIG["bundled"]))
    redis_seen, visible = [], 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        visible += 1
        for name in ("cmdline", "environ"):
            try:
                with open(f"/proc/{entry}/{name}", "rb") as fh:
                    if b"redis" in fh.read().lower():
                        redis_seen.append(f"/proc/{entry}/{name}")
            except OSError:
                pass
    out["redis in /proc"], out["processes visible"] = redis_seen[:5], visible
    def host_cmdline():  # its pid may name one of the agent's own processes: is it the host's?
        with open(f"/proc/{CONFIG['host_pid']}/cmdline", "rb") as fh:
            return fh.read().hex() == CONFIG["host_cmdline"]
    out["host process cmdline"] = attempt(host_cmdline)
    out["run dirs"] = run_dirs()
    out["other agent's file"] = attempt(lambda: read(CONFIG["other_secret"]))
    out["other agent's /tmp"] = attempt(lambda: read(CONFIG["other_tmp_secret"]))
    out["agents dir"] = attempt(lambda: os.listdir(CONFIG["agents_dir"]))
    out["write home"] = attempt(lambda: open("mine.txt", "w").write("mine"))
    found(**out)


def memory():
    hog = []
    while len(hog) < 32:  # touched pages, 32 MiB at a time, up to 1 GiB (a machine without the fence survives)
        hog.append(b"\x01" * (32 << 20))
        print(f"hog: {32 * len(hog)} MiB", flush=True)
    found(allocated_mib=32 * len(hog))


def disk():
    """Write past the disk cap in each writable place, keeping every file: one cap for all four."""
    out = {}
    link = os.path.dirname(os.environ["FLATEVAL_AGENT_BIND"].removeprefix("ipc://"))  # its socket's folder
    for place in (os.environ["HOME"], "/tmp", "/var/tmp", "/dev/shm", link):
        written, error = 0, None
        try:
            with open(os.path.join(place, CONFIG["token"] + ".bin"), "wb") as fh:
                while written < 4 * CONFIG["disk"]:
                    fh.write(b"\x01" * (1 << 20))
                    written += 1 << 20
        except OSError as exc:
            error = errno.errorcode.get(exc.errno, str(exc.errno))
        out[{os.environ["HOME"]: "home", link: "ipc"}.get(place, place)] = {"mib": written >> 20, "error": error}
    found(**out)


def bomber(depth):
    """Two children, each a bomber one level down, then sleep: at most 2^(depth+1) processes."""
    try:
        os.setsid()
        for _ in range(2):
            if depth and os.fork() == 0:
                bomber(depth - 1)
        time.sleep(3600)
    finally:
        os._exit(0)


def fork_bomb():
    deadline, refused, made = time.time() + 15, None, 0
    while time.time() < deadline:  # bombers (at most 4 x 127 processes), then forks until one is refused
        try:
            pid = os.fork()
        except OSError as exc:
            refused = f"{type(exc).__name__}: {exc}"
            break
        if pid == 0:
            bomber(6 if made < 4 else 0)
        made += 1
        time.sleep(0.01)
    found(refused=refused, forked=made)


def spin():
    out = {"affinity": sorted(os.sched_getaffinity(0))}
    out["widen"] = attempt(lambda: os.sched_setaffinity(0, range(os.cpu_count())))
    out["affinity after"] = sorted(os.sched_getaffinity(0))
    before, started = os.times(), time.monotonic()
    children = []
    for _ in range(2 * os.cpu_count()):
        pid = os.fork()
        if pid == 0:
            try:
                end = time.monotonic() + 1.0
                while time.monotonic() < end:
                    pass
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    after = os.times()
    out["wall"] = time.monotonic() - started
    out["cpu"] = after.children_user - before.children_user + after.children_system - before.children_system
    found(**out)


class Hostile:
    def reset(self, info):
        test = int(info["env_file"].split("/")[0].split("_")[1])
        attack = CONFIG["attacks"].get(str(test))
        if attack:
            globals()[attack]()

    def act(self, observations, info):
        return {}


serve(Hostile())
'''


def require(report: Report, *fences: str) -> None:
    """Skip, with the start-up line's reason, when this machine cannot build one of `fences`."""
    missing = [f"{f}: {report.off.get(f, 'not in the start-up line')}" for f in fences if f not in report.on]
    if missing:
        pytest.skip("this machine lacks the fence: " + "; ".join(missing))


def _cores(text: str) -> list[int]:
    """``0-2,5`` -> [0, 1, 2, 5]."""
    cores = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cores += range(int(low), int(high or low) + 1)
    return cores


def findings(episode: dict) -> dict:
    """The report the hostile agent raised (its error message, which the protocol keeps up to
    `ERROR_MESSAGE_CHARS`: every report is bounded to fit, whatever the machine holds)."""
    error = episode["error"] or ""
    assert "REPORT {" in error, error
    text = error.split("REPORT ", 1)[1]
    try:
        return json.JSONDecoder().raw_decode(text)[0]  # what may follow: the breach's closing bracket
    except json.JSONDecodeError:
        if len(error) >= ERROR_MESSAGE_CHARS:
            pytest.fail(f"the agent's report was cut at the protocol's {ERROR_MESSAGE_CHARS} characters "
                        f"(make it shorter): ...{text[-200:]}")
        raise


def test_a_cut_report_says_it_was_cut():
    whole = "agent raised: REPORT " + json.dumps({"run dirs": ["x" * 80] * 40})
    assert findings({"error": whole}) == {"run dirs": ["x" * 80] * 40}
    with pytest.raises(pytest.fail.Exception, match="report was cut at the protocol's 2000 characters"):
        findings({"error": whole[:ERROR_MESSAGE_CHARS]})


def refused(result: str) -> bool:
    return result.startswith("refused:")


# ------------------------------------------------------------------------------------ units

def test_memory_sizes_parse_and_print():
    assert parse_memory("15Gi") == 15 * 2**30 and parse_memory("512Mi") == 512 * 2**20
    assert parse_memory("2G") == 2 * 10**9 and parse_memory("1.5Gi") == int(1.5 * 2**30)
    assert format_bytes(15 * 2**30) == "15 GiB" and format_bytes(parse_memory("1.5Gi")) == "1.5 GiB"
    for bad in ("lots", "15 Gigs", "-1Gi", "1"):
        with pytest.raises(ValueError):
            parse_memory(bad)
    assert format_cores([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_the_disk_cap_comes_from_the_challenge_unless_the_option_says_otherwise():
    from core.challenge import ChallengeError, load_challenge, parse_challenge

    assert SandboxSpec().disk_bytes == 2 * 2**30 == SandboxSpec.from_options().disk_bytes
    assert load_challenge(None).phase(None).agent_resources.disk == "2Gi"
    phase = parse_challenge({"name": "x", "phases": {"a": {"agent_resources": {"disk": "512Mi"}}}}, "c.yaml").phase("a")
    assert SandboxSpec.from_options(resources=phase.agent_resources).disk_bytes == 512 * 2**20
    assert SandboxSpec.from_options(resources=phase.agent_resources, disk="64Mi").disk_bytes == 64 * 2**20
    with pytest.raises(ValueError, match="^--agent-disk: '1k' is too little disk for any agent"):
        SandboxSpec.from_options(disk="1k")
    with pytest.raises(ChallengeError, match="agent_resources.disk: expected a size"):
        parse_challenge({"name": "x", "phases": {"a": {"agent_resources": {"disk": "lots"}}}}, "c.yaml")


def test_agents_get_their_own_cores_while_there_are_enough():
    mine = sorted(os.sched_getaffinity(0))
    first = SandboxSpec(cpus=1, cpu_offset=0).cores()
    second = SandboxSpec(cpus=1, cpu_offset=1).cores()
    assert len(first) == len(second) == 1 and set(first) <= set(mine)
    assert first != second or len(mine) == 1
    assert SandboxSpec(cpus=0.5, cpu_offset=0).cores() == first  # half a core is a core at half its time
    assert SandboxSpec(cpus=len(mine) + 3).cores() == mine  # never more than the worker has
    busy = {core: 1 for core in first}  # without an offset: the cores other agents use least
    assert SandboxSpec(cpus=1).cores(busy) == (second if len(mine) > 1 else first)


def test_the_line_round_trips():
    report = Report()
    for key in FENCES:
        report.put(key, f"({key} detail, with a comma)" if key != "netns" else "")
    report.put("quota", reason="no writable cgroup has the controller; not delegated")
    parsed = parse_line(report.line())
    assert parsed.on == report.on and parsed.off == report.off
    assert len(report.line().splitlines()) == 1


def test_the_environment_is_an_allowlist():
    host = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "PYTHONPATH": "/opt/x", "AWS_SECRET_ACCESS_KEY": "k",
            "GITHUB_TOKEN": "t", "SSH_AUTH_SOCK": "/run/ssh", "DATABASE_URL": "postgres://u:p@h/db", "HOME": "/root",
            "FLATEVAL_REDIS_URL": "redis://x", "FLATEVAL_SPIN_US": "1000", "OMP_NUM_THREADS": "64"}
    env = sandboxed_environment("ipc:///x/agent.sock", "/agents/a/home", 2, "secret-key", base=host)
    assert set(env) == {"PATH", "LANG", "LC_ALL", "PYTHONPATH", "FLATEVAL_SPIN_US", "HOME", "TMPDIR", "USER", "LOGNAME",
                        "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                        "FLATEVAL_AGENT_BIND", "FLATEVAL_CURVE_SECRET_KEY"}
    assert env["HOME"] == "/agents/a/home" and env["TMPDIR"] == "/agents/a/home/tmp"
    assert env["OMP_NUM_THREADS"] == "64" and env["MKL_NUM_THREADS"] == "2"


def test_the_agent_is_shown_the_paths_its_command_names(tmp_path):
    """Directories named in the command, also as ``NAME=/a:/b`` assignments (how a participant points
    PYTHONPATH at a Policy package), are made reachable for an agent of another uid."""
    from env_worker.sandbox.box import needed_paths

    package, script, other = tmp_path / "sub", tmp_path / "bin" / "agent.py", tmp_path / "other"
    for folder in (package, script.parent, other):
        folder.mkdir()
    script.write_text("")
    found = needed_paths(f"cd {tmp_path} && PYTHONPATH={package}:relative python {script}", {"PYTHONPATH": str(other)})
    assert {str(package), str(script.parent), str(other), str(tmp_path)} <= set(found)
    assert "relative" not in found and len(found) == len(set(found))


def test_a_path_holding_the_agents_own_files_cannot_be_hidden(tmp_path):
    """What the agent needs (its command's files, PYTHONPATH, its private directory) inside a path to
    hide: named in one line. A sibling with the same prefix is no parent."""
    from env_worker.sandbox.box import unhideable

    tests, sibling, own = tmp_path / "tests", tmp_path / "tests2", tmp_path / "agents" / "a"
    for folder in (tests, sibling, own):
        folder.mkdir(parents=True)
    (sibling / "agent.py").write_text("")
    assert unhideable([str(tests)], f"python {sibling / 'agent.py'}", own, {}) is None
    (tests / "agent.py").write_text("")
    line = unhideable(["/run", str(tests)], f"python {tests / 'agent.py'}", own, {})
    assert line.startswith(f"the sandbox cannot hide {tests} from the agent: it holds the agent's own files ({tests})")
    assert unhideable([str(tests)], "python -m agent", own, {"PYTHONPATH": f"/nowhere:{tests}"}) is not None
    assert unhideable([str(tmp_path / "agents")], "python -m agent", own, {}) is not None  # where it runs
    assert "\n" not in line


def test_a_test_set_holding_the_agent_refuses_to_start(tmp_path, small_test_set, redis_url, fault_report):
    """The agent's script inside the test set: `flateval run` refuses before anything starts, and a
    worker told of that test set refuses to start the agent; one line each, no results, nothing left."""
    shutil.copytree(small_test_set, tmp_path / "tests")
    (tmp_path / "tests" / "agent.py").write_text("from agent_bridge.examples.do_nothing import *\n")
    (tmp_path / "cwd").mkdir()
    run = flateval("run", "--agent", f"{sys.executable} agent.py", "--test-set", ".", cwd=tmp_path / "tests")
    assert run.returncode == 1
    assert run.stderr.splitlines() == [f"flateval: the sandbox cannot hide {tmp_path / 'tests'} from the agent: it "
                                       f"holds the agent's own files ({tmp_path / 'tests'}); keep the agent's command "
                                       "and files out of it"]
    assert not (tmp_path / "tests" / "flateval-results").exists()
    worker = flateval("worker", "--redis", redis_url, "--queue", f"flateval-{uuid.uuid4().hex}", "--burst",
                      "--agent", f"{sys.executable} {tmp_path / 'tests' / 'agent.py'}", cwd=tmp_path / "cwd",
                      env={"FLATEVAL_TEST_SET_DIR": str(tmp_path / "tests")}, timeout=60)
    assert worker.returncode == 1
    assert [line for line in worker.stderr.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line)] == [
        f"flateval: cannot start the agent in its sandbox: the sandbox cannot hide {tmp_path / 'tests'} from the "
        f"agent: it holds the agent's own files ({tmp_path / 'tests'}); keep the agent's command and files out of it"]
    assert list((tmp_path / "cwd").iterdir()) == []
    fault_report("a test set that holds the agent's own files (its script), which the sandbox cannot hide",
                 "`flateval run` refuses before anything starts, a worker before it starts the agent: one line "
                 "each, exit 1, nothing run", None)


# ------------------------------------------------------------------------------------ one agent

BURN = """
import os, time
from agent_bridge import serve
class Burn:
    def reset(self, info):
        self.ballast = b"\\x01" * (96 << 20)  # 96 MiB, touched
        end = time.process_time() + 0.4
        while time.process_time() < end:
            pass
        del self.ballast
    def act(self, obs, info):
        return {}
serve(Burn())
"""


def test_usage_reads_cpu_seconds_and_peak_memory(tmp_path, small_test_set):
    from env_worker.agent_link import AgentLink
    from env_worker.episode import run_episode
    from tests.test_episode import spec_for

    script = tmp_path / "burn.py"
    script.write_text(BURN)
    agent = AgentProcess(f"{sys.executable} {script}", tmp_path / "burn.log", sandbox=SandboxSpec(cpus=1))
    link = None
    try:
        agent.start(30)
        idle = agent.usage(reset_peak=True)
        link = AgentLink(agent.endpoint)
        result = run_episode(spec_for(small_test_set), link)
        assert result.outcome == "completed", result.error
        after = agent.usage(reset_peak=True)
        quiet = agent.usage()
    finally:
        if link:
            link.close()
        agent.stop()
    require(parse_line(agent.sandbox_line()), "memory", "quota")
    assert after.source == "cgroup"
    assert 0.35 <= after.cpu_since(idle) < 3.0, (idle, after)  # 0.4 s burnt in the episode, and little else
    assert after.peak_memory_bytes >= 96 << 20, (idle, after)  # the episode's ballast
    assert quiet.peak_memory_bytes < after.peak_memory_bytes - (64 << 20), (after, quiet)  # a new window


LOUD = """
import sys
from agent_bridge import serve
out = sys.stdout.buffer
out.write(b"first line\\n")
for i in range({lines}):
    out.write(b"%08d" % i + b"x" * 1015 + b"\\n")  # 1 KiB a line
out.write(b"last line\\n")
out.flush()
class DoNothing:
    def reset(self, info): pass
    def act(self, obs, info): return {{}}
serve(DoNothing())
"""


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandboxed", "no-sandbox"])
def test_an_agent_that_prints_without_end_costs_a_bounded_log(tmp_path, fault_report, sandboxed):
    """Its log keeps the head and the tail (what the results keep) and counts the rest, whatever it
    prints, in the sandbox (its launcher keeps the log) or not (a keeper process does; containers too)."""
    from env_worker.sandbox.launcher import OUTPUT_HEAD_BYTES, OUTPUT_TAIL_BYTES

    lines = 32 * 1024  # 32 MiB
    script = tmp_path / "loud.py"
    script.write_text(LOUD.format(lines=lines))
    log = tmp_path / "loud.log"
    agent = AgentProcess(f"{sys.executable} {script}", log, sandbox=SandboxSpec(cpus=1) if sandboxed else None)
    try:
        agent.start(60)
        wait_for(lambda: "last line\n" in agent.output_tail(300), 30, "the last line in the log")
        printed = len("first line\n") + lines * 1024 + len("last line\n")
        text = log.read_bytes()
    finally:
        agent.stop()
    match = re.search(rb"\n\[flateval\] (\d+) bytes of the agent's output not kept\n", text)
    assert text.startswith(b"first line\n") and match, text[:200]
    assert len(text) <= OUTPUT_HEAD_BYTES + len(match.group(0)) + 2 * OUTPUT_TAIL_BYTES
    kept = len(text) - len(match.group(0))  # every byte kept or counted (and its "serving on ..." line)
    assert printed <= int(match.group(1)) + kept <= printed + 300, (match.group(1), kept, printed)
    if not sandboxed:
        return
    fault_report(f"agent prints {printed >> 20} MiB at start", f"its log holds {len(text) >> 10} KiB: the first "
                 f"{OUTPUT_HEAD_BYTES >> 10} KiB, the last {OUTPUT_TAIL_BYTES >> 10} KiB or more, and a line counting "
                 "the rest; the results keep the tail", None)


# ------------------------------------------------------------------------------------ the hostile run

@pytest.fixture(scope="module")
def hostile_run(small_test_set, redis_url, tmp_path_factory):
    """One `flateval run` of the hostile agent on one worker; what it did and what it printed."""
    base = tmp_path_factory.mktemp("hostile")
    base.chmod(0o755)  # the agent's own directory; the test set in it is world-readable on purpose
    test_set = base / "tests"
    sources = sorted(small_test_set.glob("*/*.pkl"))
    for i in range(EPISODES):
        (test_set / f"Test_{i}").mkdir(parents=True)
        shutil.copy(sources[i % len(sources)], test_set / f"Test_{i}" / "Level_0.pkl")
    for path in [test_set, *test_set.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    before = {p: p.read_bytes() for p in test_set.rglob("*.pkl")}

    listeners = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.bind((host, free_port()))
            sock.listen(8)
            listeners.append(sock)
        except OSError:
            continue
    redis_host, redis_port = redis_url.split("//")[1].split("/")[0].rsplit(":", 1)
    targets = [(redis_host, int(redis_port))] + [s.getsockname()[:2] for s in listeners]

    token = f"flateval-disk-{uuid.uuid4().hex[:8]}"
    other_script = base / "other.py"  # another submission, which keeps a secret in its home and its /tmp
    other_script.write_text(f"import os\nfor d in (os.environ['HOME'], '/tmp'):\n"
                            f"    open(os.path.join(d, '{token}-secret.txt'), 'w').write('a secret')\n"
                            "import runpy\nrunpy.run_module('agent_bridge.examples.do_nothing', run_name='__main__')\n")
    other_script.chmod(0o644)
    other = AgentProcess(f"{sys.executable} {other_script}", base / "other.log", sandbox=SandboxSpec(cpus=1))
    other.start(30)
    secret = other.sandbox.home / f"{token}-secret.txt"
    import flateval as package

    config = {"attacks": {str(k): v for k, v in ATTACKS.items()}, "targets": targets, "test_set": str(test_set),
              "test_files": [str(p) for p in sorted(before)], "other_secret": str(secret),
              "other_socket": other.endpoint.removeprefix("ipc://"), "agents_dir": str(other.sandbox.agents_dir),
              "bundled": str(Path(package.__file__).parent / "data" / "test_sets"), "host_pid": os.getpid(),
              "host_cmdline": Path("/proc/self/cmdline").read_bytes().hex(), "token": token,
              "disk": parse_memory(DISK), "other_tmp_secret": f"/tmp/{token}-secret.txt"}
    script = base / "hostile.py"
    script.write_text("CONFIG = " + repr(config) + "\n" + HOSTILE)
    script.chmod(0o644)
    out = base / "results.json"
    try:
        done = flateval("run", "--agent", f"{sys.executable} {script}", "--test-set", str(test_set), "--workers", "1",
                        "--redis", redis_url, "--agent-memory", MEMORY, "--agent-pids", str(PIDS),
                        "--agent-cpus", str(CPUS), "--agent-disk", DISK, "--output", str(out), timeout=300)
        reachable = {}
        for host, port in targets:  # the control: from outside the sandbox every target answers
            with socket.create_connection((host, port), timeout=2):
                reachable[f"{host}:{port}"] = True
    finally:
        other.stop()
        for sock in listeners:
            sock.close()
        left = _host_files(token)  # what the agents wrote that the host still holds (then removed)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("sandbox: ")]
    assert len(lines) == 1, done.stderr
    document = json.loads(out.read_text())
    episodes = {int(e["env_file"].split("/")[0][5:]): e for e in document["episodes"]}
    return {"document": document, "episodes": episodes, "report": parse_line(lines[0]), "line": lines[0],
            "test_set": test_set, "before": before, "reachable": reachable, "config": config, "left": left}


def _host_files(token: str) -> list[str]:
    """Files named with `token` in the host's /tmp, /var/tmp, /dev/shm and agents' directories; removed."""
    from env_worker.sandbox.box import agents_dir

    found = []
    for top in ("/tmp", "/var/tmp", "/dev/shm", str(agents_dir())):
        for folder, _, files in os.walk(top) if top == str(agents_dir()) else [(top, [], os.listdir(top))]:
            found += [os.path.join(folder, f) for f in files if token in f]
    for path in found:
        os.unlink(path)
    return found


def test_the_start_up_line_says_what_is_in_force_and_why_not(hostile_run):
    report = hostile_run["report"]
    print(hostile_run["line"])
    assert set(report.on) | set(report.off) == set(FENCES), hostile_run["line"]
    assert all(reason for reason in report.off.values())
    assert report.on["dir"] == "(private)" and report.on["env"] == "(allowlist)"
    if "memory" in report.on:
        assert report.on["memory"].startswith(format_bytes(parse_memory(MEMORY)))


def test_the_worker_carries_on_and_good_episodes_score_exactly(hostile_run):
    document, episodes = hostile_run["document"], hostile_run["episodes"]
    assert document["status"] == "finished" and len(episodes) == EPISODES
    assert len({e["worker"] for e in episodes.values()}) == 1  # one worker played everything
    for test, episode in episodes.items():
        if test in ATTACKS:
            assert episode["outcome"] == "agent_error" and episode["normalized_return"] == -1.0, episode
            continue
        expected, done, steps = direct_normalized_return(hostile_run["test_set"] / episode["env_file"])
        assert episode["outcome"] == "completed", episode
        assert episode["normalized_return"] == pytest.approx(expected, abs=1e-9)
        assert (episode["percentage_complete"], episode["steps"]) == (pytest.approx(done, abs=1e-9), steps)


def test_the_agent_reaches_neither_redis_nor_loopback_nor_another_agent(hostile_run, fault_report):
    require(hostile_run["report"], "netns")
    seen = findings(hostile_run["episodes"][1])
    assert set(hostile_run["reachable"]) <= set(seen)  # every target the test could reach was tried
    assert all(refused(result) for result in seen.values()), seen
    fault_report("agent connects to the run's Redis, other loopback ports (IPv4, IPv6) and another agent's "
                 "socket", "every attempt refused (" + "; ".join(sorted({r.split(":")[1].strip() for r in seen.values()}))
                 + "): its own network namespace, its link an ipc:// socket; the episode is an agent_error, the "
                 "worker carries on", None)


def test_the_agent_reads_and_writes_nothing_of_the_test_set_the_worker_or_others(hostile_run, fault_report):
    report = hostile_run["report"]
    require(report, "mounts", "pidns", "user")
    seen = findings(hostile_run["episodes"][3])
    reads = seen["read test set"]
    assert reads["ok"] == 0 and reads["of"] == EPISODES and refused(reads["first"]), reads
    assert seen["list test set"] in ("ok: []",) or refused(seen["list test set"]), seen["list test set"]
    assert refused(seen["write test set"]) and refused(seen["append to a level"])
    assert {p: p.read_bytes() for p in hostile_run["test_set"].rglob("*.pkl")} == hostile_run["before"]
    assert not list(hostile_run["test_set"].rglob("planted.txt"))
    assert refused(seen["bundled test sets"]) or seen["bundled test sets"] == "ok: []"
    assert seen["redis in /proc"] == [] and seen["processes visible"] <= 3, seen  # its shell, itself, a helper
    assert refused(seen["host process cmdline"]) or seen["host process cmdline"] == "ok: False"
    assert seen["run dirs"]["found"] >= 1 and seen["run dirs"]["listed"] == 0, seen["run dirs"]
    assert refused(seen["other agent's file"]) and refused(seen["agents dir"])
    assert refused(seen["other agent's /tmp"]), seen["other agent's /tmp"]
    # its own uid, no groups, a private 0700 working directory that is its HOME, an allowlisted environment
    assert seen["uid"] == seen["cwd owner"] == int(report.on["user"]) and seen["uid"] != 0
    assert seen["groups"] == [] and seen["cwd mode"] == "0o700" and seen["cwd"] == seen["home"]
    assert seen["write home"].startswith("ok")
    assert not [k for k in seen["env"] if re.search("REDIS|RQ_|PROMETHEUS|TOKEN|SECRET|PASSWORD", k)]
    fault_report("agent reads and writes the (world-readable) test set, looks for the Redis URL in /proc, reads "
                 "the run directory and another agent's files",
                 f"nothing read or written ({seen['read test set']['first'].split(':')[1].strip()}); it sees "
                 f"{seen['processes visible']} processes, its own; it runs as uid {seen['uid']} in a private 0700 "
                 "directory with an allowlisted environment", None)


def test_a_memory_hog_is_killed_and_the_limit_named(hostile_run, fault_report):
    require(hostile_run["report"], "memory")
    episode = hostile_run["episodes"][5]
    assert episode["outcome"] == "agent_error"
    assert episode["error"].startswith(f"memory limit {format_bytes(parse_memory(MEMORY))} exceeded"), episode["error"]
    fault_report(f"agent allocates past --agent-memory {MEMORY}", f"`agent_error`: {episode['error']}; the next "
                 "episode scores normally", None)


def test_a_fork_bomb_is_bounded_and_the_limit_named(hostile_run, fault_report):
    require(hostile_run["report"], "pids", "pidns")
    episode = hostile_run["episodes"][7]
    seen = findings(episode)
    assert seen["refused"] and 0 < seen["forked"] < PIDS, seen  # refused long before the bomb's 500 processes
    assert episode["error"].startswith(f"process limit {PIDS} reached"), episode["error"]
    # its bombers died with the agent's restart: the good episode after it ran on a fresh agent
    assert hostile_run["episodes"][8]["outcome"] == "completed"
    fault_report(f"agent forks without end (--agent-pids {PIDS})", f"forks refused after {seen['forked']} of the "
                 f"agent's own; `agent_error`: {episode['error'].split(' (')[0]}; every bomber dies with the agent's "
                 "restart", None)


def test_the_agents_disk_is_its_own_capped_and_gone_when_it_stops(hostile_run, fault_report):
    """Its home, /tmp, /var/tmp and /dev/shm share one cap; a write past it fails inside the agent;
    the host's /tmp and /var/tmp never see a byte, and nothing it wrote is left once it stopped."""
    require(hostile_run["report"], "disk")
    assert hostile_run["report"].on["disk"].startswith(f"{format_bytes(parse_memory(DISK))} (home, /tmp, /var/tmp")
    seen = findings(hostile_run["episodes"][11])
    assert set(seen) == {"home", "/tmp", "/var/tmp", "/dev/shm", "ipc"}, seen
    assert all(result["error"] in ("ENOSPC", "EDQUOT") for result in seen.values()), seen
    written = sum(result["mib"] for result in seen.values())
    assert parse_memory(DISK) // 2 <= written << 20 <= parse_memory(DISK), seen
    assert hostile_run["left"] == []  # neither in the host's places nor in its directory, nor the other agent's
    assert hostile_run["episodes"][12]["outcome"] == "completed"
    fault_report(f"agent writes past --agent-disk {DISK} in its home, /tmp, /var/tmp, /dev/shm and its socket's folder",
                 f"{written} MiB written in all, then ENOSPC in each place (one tmpfs of its own); the host's /tmp and "
                 "/var/tmp untouched, nothing left once it stopped; the next episode scores normally", None)


def test_a_spinner_keeps_to_its_core_and_its_quota(hostile_run, fault_report):
    report = hostile_run["report"]
    require(report, "cpus", "quota")
    seen = findings(hostile_run["episodes"][9])
    allowed = _cores(report.on["cpus"].split()[0])
    assert seen["affinity"] == seen["affinity after"] == allowed, seen
    # 4 processes spinning for 1 s of wall time got at most half a core's time (plus a period's slack)
    assert seen["cpu"] <= CPUS * seen["wall"] + 0.15, seen
    fault_report(f"agent spins {2 * os.cpu_count()} processes on every core and widens its affinity (--agent-cpus "
                 f"{CPUS:g})", f"it stays on core(s) {format_cores(allowed)} and gets {seen['cpu']:.2f} CPU s in "
                 f"{seen['wall']:.2f} s; the good episodes on the same worker score exactly", None)


# ------------------------------------------------------------------------------------ nothing outlives

GRANDCHILD = """
import os, subprocess, sys, time
from agent_bridge import serve
for place in (os.environ["HOME"], "/tmp", "/var/tmp", "/dev/shm"):  # files that must not outlive it
    open(os.path.join(place, "{token}.bin"), "wb").write(b"x" * 4096)
print("wrote its files", flush=True)
subprocess.Popen([sys.executable, "-c", "import signal, time\\n"
                  "for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT): signal.signal(s, signal.SIG_IGN)\\n"
                  "time.sleep(3600)", "{token}"], start_new_session=True, stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
class SlowDoNothing:
    def reset(self, info): pass
    def act(self, obs, info):
        time.sleep(0.05)
        return {{}}
serve(SlowDoNothing())
"""


def _live(needles: list[str]) -> list[int]:
    """Pids of live (not zombie) processes whose command line holds one of `needles`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(n.encode() in cmdline for n in needles):
            found.append(int(entry.name))
    return found


def _children(pids: list[int]) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) in pids:
                kids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return kids


def _grandchild_agent(tmp_path: Path) -> tuple[Path, str]:
    """An agent script that starts a detached grandchild (its own session, SIGTERM ignored) holding
    a unique token in its command line."""
    token = f"flateval-grandchild-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "spawner.py"
    script.write_text(GRANDCHILD.format(token=token))
    return script, token


def _sandbox_line(stream) -> Report:
    for _ in range(20):
        line = stream.readline()
        if line.startswith("sandbox: "):
            return parse_line(line.strip())
    raise AssertionError("no sandbox line")


def _sigkill_and_check_everything_dies(victim: subprocess.Popen, needles: list[str], what: str) -> float:
    """SIGKILL `victim`; wait until every process that mentions a needle, and their children, is gone."""
    tree = set(_live(needles))
    tree |= set(_children(list(tree)))  # the sandbox launchers (their command lines are encoded)
    tree |= set(_children(list(tree)))
    assert victim.pid in tree and _live(needles[1:]), tree
    victim.kill()
    victim.wait(10)
    killed_at = time.monotonic()
    try:
        wait_for(lambda: not (set(_live(needles)) | {p for p in tree if Path(f"/proc/{p}").exists()
                                                     and (Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1]
                                                          .split()[0] != "Z")}), 15, f"everything {what} started to die")
    finally:
        for pid in _live(needles):  # never leave one behind, whatever the verdict
            os.kill(pid, signal.SIGKILL)
        from env_worker.sandbox import box, cgroups

        cgroups.remove_stale()  # the empty cgroups and directories the killed worker could not remove
        box.remove_stale_dirs(box.agents_dir())
    return time.monotonic() - killed_at


def test_a_detached_grandchild_dies_with_its_sigkilled_worker(redis_url, tmp_path, fault_report):
    script, token = _grandchild_agent(tmp_path)
    worker = subprocess.Popen([*FLATEVAL, "worker", "--redis", redis_url, "--queue", f"flateval-idle-{token}",
                               "--agent-command", f"{sys.executable} {script}", "--agent-log", str(tmp_path / "agent.log")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _live([token]) or worker.poll() is not None, 60, "the grandchild")
        assert worker.poll() is None, worker.stderr.read()
        report = _sandbox_line(worker.stderr)
        require(report, "pidns")
        assert "wrote its files" in (tmp_path / "agent.log").read_text()
        took = _sigkill_and_check_everything_dies(worker, [str(script), token], "the worker")
        if "disk" in report.on:  # its files were in its own places, gone with its mount namespace
            assert _host_files(token) == []
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    fault_report("worker SIGKILLed while its agent runs a detached grandchild (new session, SIGTERM ignored)",
                 "the agent, its shell and the grandchild die with the worker: the agent is PID 1 of its own pid "
                 "namespace, tied to the worker by a parent-death signal", took)


def test_a_detached_grandchild_dies_with_a_sigkilled_flateval_run(redis_url, small_test_set, tmp_path):
    script, token = _grandchild_agent(tmp_path)
    run = subprocess.Popen([*FLATEVAL, "run", "--agent", f"{sys.executable} {script}", "--test-set", str(small_test_set),
                            "--workers", "1", "--redis", redis_url, "--overall-timeout", "120"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = None
    try:
        wait_for(lambda: _live([token]) or run.poll() is not None, 60, "the grandchild")
        assert run.poll() is None, run.stderr.read()
        report = _sandbox_line(run.stderr)
        require(report, "pidns")
        [worker] = [p for p in _children([run.pid]) if b" worker" in Path(f"/proc/{p}/cmdline").read_bytes()
                    .replace(b"\0", b" ")]
        argv = Path(f"/proc/{worker}/cmdline").read_bytes().decode().split("\0")
        run_dir = Path(argv[argv.index("--agent-log") + 1]).parent
        assert "wrote its files" in (run_dir / "pair-0.agent.log").read_text()
        _sigkill_and_check_everything_dies(run, [str(script), token], "flateval run")
        if "disk" in report.on:  # its files were in its own places, gone with its mount namespace
            assert _host_files(token) == []
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if run_dir is not None:  # what the killed run could not clean up itself
            shutil.rmtree(run_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------ not root

def test_as_a_plain_user_the_sandbox_degrades_clearly_and_still_fences(redis_url, redis_conn, small_test_set,
                                                                        tmp_path):
    """A `flateval worker` run by a user who is not root (here: inside a sandbox of our own, as its
    uid, with the network) still fences its agent in with a user namespace (network, pids, mounts)
    and RLIMIT_AS, says what it cannot do (another user, cgroups) and scores exactly."""
    if os.geteuid() != 0:
        pytest.skip("cannot run: needs root to make a plain user (as a plain user, the tests above are this test)")
    test_set = tmp_path / "tests"
    shutil.copytree(small_test_set, test_set)
    install = tmp_path / "install"  # the user's own copy of flateval: a checkout in a 0700 folder is not theirs to read
    for package in ("agent_bridge", "broker", "core", "env_worker", "flateval", "report", "scoring"):
        shutil.copytree(Path(__file__).resolve().parents[1] / package, install / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for path in [test_set, *test_set.rglob("*"), install, *install.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    sid = flateval("submit", "--redis", redis_url, "--test-set", str(test_set)).stdout.strip()
    worker = (f"cd {test_set} && PYTHONPATH={install} {sys.executable} -m flateval worker --redis {redis_url} "
              f"--queue flateval-{sid} --burst --agent-command '{DO_NOTHING}' --agent-memory 1Gi "
              f"--agent-log \"$HOME/agent.log\"")
    user = AgentProcess(worker, tmp_path / "worker.log", bind="tcp://127.0.0.1:1",  # a TCP bind: no netns for it
                        sandbox=SandboxSpec(cpus=2))
    try:
        user.start(handshake=False)
        user.process.wait(120)
    finally:
        user.stop()
        shutil.rmtree(user.sandbox.agents_dir.with_name(f"flateval-agents-{user.sandbox.uid}"), ignore_errors=True)
    log = (tmp_path / "worker.log").read_text()
    assert user.process is None and "Traceback" not in log, log
    [line] = [line for line in log.splitlines() if line.startswith("sandbox: ")]
    report = parse_line(line)
    print(line)
    assert report.off["user"].endswith("not root: the agent runs as that user")
    assert {"quota", "pids"} <= set(report.off) and "cgroup" in report.off["quota"]
    assert report.on["memory"] == "1 GiB (RLIMIT_AS, per process)"
    require(report, "netns", "pidns", "mounts")  # a kernel without unprivileged user namespaces says why
    assert report.on["netns"] == "(user namespace)"
    document = json.loads(flateval("results", sid, "--redis", redis_url).stdout)
    check_against_direct(document, test_set)


# ------------------------------------------------------------------------------------ the command line

def test_a_bad_memory_size_is_one_line(small_test_set):
    done = flateval("run", "--agent", DO_NOTHING, "--test-set", str(small_test_set), "--agent-memory", "lots")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == ["flateval: --agent-memory: expected a size like 15Gi or 512Mi, got 'lots'"]


def test_no_sandbox_says_so_and_still_scores(small_test_set, tmp_path):
    out = tmp_path / "results.json"
    done = flateval("run", "--agent", DO_NOTHING, "--test-set", str(small_test_set), "--workers", "1", "--no-sandbox",
                    "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("sandbox: ")] == [
        "sandbox: off (--no-sandbox): the agent runs as flateval's user, with its network, files and environment "
        "(less Redis and flateval variables), and no limits"]
    assert json.loads(out.read_text())["status"] == "finished"


HOME_PROBE = """
import hashlib, json, os, sys
from agent_bridge import serve
home = os.environ["HOME"]
listing = {}
for folder, dirs, files in os.walk(home):
    for name in files:
        path = os.path.join(folder, name)
        listing[os.path.relpath(path, home)] = [hashlib.sha256(open(path, "rb").read()).hexdigest(),
                                                 os.stat(path).st_uid == os.getuid()]
print("HOME " + json.dumps(listing), flush=True)
class DoNothing:
    def reset(self, info): pass
    def act(self, obs, info): return {}
serve(DoNothing())
"""


def test_a_fresh_home_starts_with_the_hosts_font_list_and_nothing_else(tmp_path, monkeypatch):
    """flatland imports matplotlib, which rebuilds its font list in an empty home (0.25 s of every
    agent start): the host's list is copied in, owned by the agent, at every start; nothing else of
    the host's cache (a link out of it, another file) comes along."""
    import hashlib

    cache = tmp_path / "mplcache"
    cache.mkdir()
    font_list = cache / "fontlist-v999.json"
    font_list.write_text('{"_version": 999, "ttflist": []}')
    (cache / "tex.cache").mkdir()
    (cache / "fontlist-v998.json").symlink_to("/etc/shadow")
    monkeypatch.setenv("MPLCONFIGDIR", str(cache))
    script = tmp_path / "home_probe.py"
    script.write_text(HOME_PROBE)
    agent = AgentProcess(f"{sys.executable} {script}", tmp_path / "probe.log", sandbox=SandboxSpec(cpus=1))
    try:
        listings = []
        for start in range(2):  # a restart gets a fresh home, seeded again
            agent.start(30) if start == 0 else agent.restart(30)
            lines = [line for line in agent.output_tail().splitlines() if line.startswith("HOME ")]
            listings.append(json.loads(lines[-1][len("HOME "):]))
    finally:
        agent.stop()
    expected = {".cache/matplotlib/fontlist-v999.json": [hashlib.sha256(font_list.read_bytes()).hexdigest(), True]}
    assert listings == [expected, expected]
