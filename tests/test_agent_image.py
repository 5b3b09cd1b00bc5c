"""A participant's image as the agent (`flateval run --agent-image`), on a real container engine.

Two images built here from Dockerfiles shaped like the starter kits (tests/agent_images/), neither
holding agent_bridge: a FlatlandRemoteClient script (`python run.py`, NeurIPS 2020) and a flatland
Policy named by POLICY/OBS_BUILDER behind an entrypoint that resets PYTHONPATH (flatland-benchmarks'
f3 kit). Each scores per episode exactly what the same code scores as a local command; the fence
is read from inside a container started with the arguments flateval uses; SIGTERM stops an agent
container within 2 s; no engine is one line. The images are built once per machine (their tag is
keyed on the Dockerfile, the files copied in and the base image). The engine is the one the docker
CLI reaches, started by hand where none runs (tests/container_engine.py); the tests that need it are
marked `container` and skip, with the reason printed, only where none can be started.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from env_worker.agent_process import wait_for_handshake
from env_worker.container import bridge_deps_dir
from env_worker.container.agent import AgentContainer
from env_worker.container.bridge import PYTHONS
from env_worker.container.engine import LABEL
from env_worker.sandbox import SandboxSpec
from tests.test_run import flateval

REPO = Path(__file__).resolve().parent.parent
IMAGES = Path(__file__).resolve().parent / "agent_images"
SUBMISSIONS = Path(__file__).resolve().parent / "flatland_submissions"
REMOTE = "python -m agent_bridge.flatland_remote run.py"
POLICY = "python -m agent_bridge.flatland_policy"


def on_engine(test):
    """A test on the engine (marker `container`); the first one may build the images: 15 minutes."""
    return pytest.mark.container(pytest.mark.timeout(900)(test))


@pytest.fixture(scope="module")
def engine(container_engine, base_image):
    """The engine the docker CLI reaches (started by hand where none runs: tests/container_engine.py),
    with the project's base image built."""
    return container_engine


def build(engine, base_image: str, dockerfile: str, name: str) -> str:
    """The image of `dockerfile` (context: tests/flatland_submissions), built unless this machine has it."""
    digest = hashlib.sha256()
    base_id = engine.run("image", "inspect", "--format", "{{.Id}}", base_image).stdout.strip()
    for path in [IMAGES / dockerfile, *sorted(SUBMISSIONS.iterdir())]:
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    tag = f"flateval-test/{name}:{hashlib.sha256(digest.digest() + base_id.encode()).hexdigest()[:12]}"
    if engine.run("image", "inspect", tag, check=False).returncode != 0:
        engine.run("build", "-q", "--build-arg", f"BASE_IMAGE={base_image}", "-t", tag, "-f", str(IMAGES / dockerfile),
                   str(SUBMISSIONS), timeout_s=900, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return tag


@pytest.fixture(scope="module")
def remote_image(engine, base_image) -> str:
    return build(engine, base_image, "remote_client.Dockerfile", "remote-client")


@pytest.fixture(scope="module")
def policy_image(engine, base_image) -> str:
    return build(engine, base_image, "policy.Dockerfile", "policy")


def run(tmp_path: Path, test_set: Path, *args: str) -> tuple[dict, str]:
    out = tmp_path / f"results-{len(list(tmp_path.glob('results-*')))}.json"
    done = flateval("run", "--test-set", str(test_set), "--workers", "2", "--output", str(out), *args, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), done.stderr


def scores(document: dict) -> dict[str, tuple]:
    assert document["status"] == "finished"
    return {e["env_file"]: (e["outcome"], e["normalized_return"], e["percentage_complete"], e["steps"])
            for e in document["episodes"]}


def leaked_containers(engine) -> list[str]:
    """Agent containers of workers of this host that are gone (others' tests may run theirs meanwhile)."""
    from env_worker.sandbox.cgroups import alive

    listed = engine.run("ps", "-a", "--filter", f"label={LABEL}", "--format", f'{{{{.Label "{LABEL}"}}}}').stdout
    return [owner for owner in listed.split() if owner.rpartition(":")[0] == os.uname().nodename
            and not alive(int(owner.rpartition(":")[2]))]


@on_engine
def test_remote_client_image_scores_as_the_local_command(engine, remote_image, small_test_set, tmp_path):
    local, _ = run(tmp_path, small_test_set, "--agent",
                   f"{sys.executable} -m agent_bridge.flatland_remote {SUBMISSIONS / 'remote_client_tree.py'}")
    image, stderr = run(tmp_path, small_test_set, "--agent-image", remote_image, "--agent", REMOTE)
    assert scores(image) == scores(local)
    assert any(outcome == "completed" and nr > -1 for outcome, nr, *_ in scores(image).values())
    line = next(line for line in stderr.splitlines() if line.startswith("sandbox: container"))
    assert f"{remote_image} on {engine.name} {engine.version}" in line, line
    logs = image["agent_logs"]  # --workers 2: two containers, each one's output kept
    assert len(logs) == 2 and all("Evaluation Complete" in tail for tail in logs.values()), logs
    assert leaked_containers(engine) == []  # every container removed


@on_engine
def test_policy_image_scores_as_the_local_command(engine, policy_image, small_test_set, tmp_path):
    local, _ = run(tmp_path, small_test_set, "--agent",
                   f"PYTHONPATH={SUBMISSIONS} {sys.executable} -m agent_bridge.flatland_policy "
                   f"--policy tree_policy.ClosestBranchPolicy --obs-builder tree_policy.TreeObs")
    image, _ = run(tmp_path, small_test_set, "--agent-image", policy_image, "--agent", POLICY)
    assert scores(image) == scores(local)
    assert len(image["agent_logs"]) == 2


PROBE = r"""
import json, os, socket
found = {"uid": os.getuid(), "interfaces": sorted(os.listdir("/sys/class/net")), "test_set": os.path.exists(TEST_SET)}
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
found["cap_eff"] = int(status["CapEff"], 16)
found["no_new_privs"] = status["NoNewPrivs"].strip()
try:
    open("/etc/flateval-probe", "w")
    found["root_writable"] = True
except OSError as exc:
    found["root_writable"] = exc.strerror
with open("/tmp/scratch", "w") as fh:
    found["tmp_writable"] = fh.write("x") == 1
mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
found["mounts"] = [m for m in mounts if m.startswith("/flateval") or m.endswith("/agent_bridge")]
def cgroup(*names):
    for name in names:
        for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids"):
            path = os.path.join(root, name)
            if os.path.exists(path):
                return open(path).read().strip()
found["memory"] = cgroup("memory.max", "memory.limit_in_bytes")
found["pids"] = cgroup("pids.max")
try:
    socket.create_connection(("127.0.0.1", 9), 1)
except OSError as exc:
    found["loopback"] = type(exc).__name__
print(json.dumps(found))
"""


@on_engine
def test_the_fence_seen_from_inside(engine, base_image, remote_image, small_test_set, tmp_path):
    """The arguments flateval runs an agent container with, a probe as its command: an image whose user
    is root gets a uid of its own; no interface but lo (nothing is sent anywhere but its own loopback)."""
    spec = SandboxSpec.from_options(1, "256Mi", 64)
    for image in (remote_image, base_image):  # USER aicrowd; none (root)
        container = AgentContainer(image, None, tmp_path / "agent.log", engine, spec)
        container.name = f"flateval-probe-{os.getpid()}"
        container.args = ["python3", "-c", f"TEST_SET = {str(small_test_set)!r}\n{PROBE}"]
        try:
            done = engine.run(*container.run_args(), timeout_s=60)
        finally:
            engine.run("rm", "-f", container.name, check=False)
        found = json.loads(done.stdout.strip().splitlines()[-1])
        assert found["uid"] != 0
        assert found["interfaces"] == ["lo"]
        assert found["loopback"] == "ConnectionRefusedError"
        assert found["test_set"] is False
        assert found["cap_eff"] == 0 and found["no_new_privs"] == "1"
        assert found["root_writable"] == "Read-only file system" and found["tmp_writable"] is True
        assert sorted(found["mounts"]) == sorted(["/flateval/link", "/flateval/deps",
                                                  f"{'/home/aicrowd' if image == remote_image else ''}/agent_bridge"])
        assert found["memory"] == str(256 << 20) and found["pids"] == "64"
    assert found["uid"] == container.uid  # the base image names no user: a uid of ours


@on_engine
@pytest.mark.parametrize("image_fixture", ["remote_image", "policy_image"])
def test_sigterm_stops_an_agent_container_within_2s(engine, image_fixture, request, tmp_path):
    """The remote client runs under the engine's init; the policy image's entrypoint is a shell that
    does not exec (the agent is no child of PID 1): both stop within 2 s of SIGTERM."""
    image, command = (request.getfixturevalue("remote_image"), REMOTE) if image_fixture == "remote_image" else (
        request.getfixturevalue("policy_image"), POLICY)
    container = AgentContainer(image, command, tmp_path / "agent.log", engine, SandboxSpec.from_options(1, "1Gi"))
    container.start(120)
    try:
        sent = time.monotonic()
        engine.run("kill", "--signal", "TERM", container.name)
        container.process.wait(10)
        took = time.monotonic() - sent
    finally:
        container.stop()
    assert took < 2.0, f"{image} took {took:.2f} s to stop"
    if image_fixture == "remote_image":  # its last words: the script's own end
        assert "Evaluation Complete: 0 episodes" in container.output_tail()


GREEDY = """
from agent_bridge import serve
class Greedy:
    def reset(self, info):
        self.greedy = info["env_file"] == "Test_0/Level_0.pkl"
    def act(self, observations, info):
        if self.greedy:
            hoard = [bytearray(1 << 20) for _ in range(1024)]
        return {}
serve(Greedy())
"""


@on_engine
def test_a_container_past_its_memory_loses_that_episode_named(engine, remote_image, small_test_set, tmp_path):
    """The engine's OOM killer ends the container: that episode is an agent_error naming the limit,
    the container is replaced, the others complete; every episode says what its agent used."""
    document, _ = run(tmp_path, small_test_set, "--agent-image", remote_image, "--agent",
                      f"python -c '{GREEDY}'", "--agent-memory", "256Mi", "--workers", "1")
    episodes = {e["env_file"]: e for e in document["episodes"]}
    greedy = episodes.pop("Test_0/Level_0.pkl")
    assert greedy["outcome"] == "agent_error" and greedy["error"].startswith("memory limit 256 MiB exceeded"), greedy
    assert all(e["outcome"] == "completed" for e in episodes.values())
    assert all(e["agent_usage"]["source"] == "cgroup" and e["agent_usage"]["peak_memory_bytes"] < 256 << 20
               for e in episodes.values()), episodes


PACED = """
import time
from agent_bridge import serve
class Paced:
    def reset(self, info):
        pass
    def act(self, observations, info):
        time.sleep({delay})
        return {{}}
serve(Paced())
"""


@on_engine
def test_a_worker_asked_to_stop_finishes_its_episode_and_removes_its_container(engine, remote_image, small_test_set,
                                                                                redis_url, redis_conn, tmp_path):
    """SIGTERM mid-episode: the worker plays that episode to its end, stores it, stops its container
    and exits; another worker plays the rest; every episode is counted once."""
    done = flateval("submit", "--redis", redis_url, "--test-set", str(small_test_set))
    assert done.returncode == 0, done.stderr
    sid = done.stdout.strip()
    paced = f"python -c '{PACED.format(delay=0.02)}'"  # episodes of a few seconds
    worker = subprocess.Popen([sys.executable, "-m", "flateval", "worker", "--redis", redis_url, "--queue",
                               f"flateval-{sid}", "--agent-image", remote_image, "--agent-command", paced,
                               "--agent-log", str(tmp_path / "agent.log"), "--agent-cpus", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not redis_conn.keys("flateval:lease:*"):  # an episode is being played
            assert worker.poll() is None and time.monotonic() < deadline, worker.stderr.read() if worker.poll() else ""
            time.sleep(0.05)
        assert redis_conn.hlen(f"flateval:submission:{sid}:results") == 0
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(120) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    results = {k.decode(): json.loads(v) for k, v in redis_conn.hgetall(f"flateval:submission:{sid}:results").items()}
    assert [r["outcome"] for r in results.values()] == ["completed"]
    assert not [c for c in engine.run("ps", "-a", "--filter", f"label={LABEL}", "--format",
                                      f'{{{{.Label "{LABEL}"}}}}').stdout.split() if c.endswith(f":{worker.pid}")]
    done = flateval("worker", "--redis", redis_url, "--queue", f"flateval-{sid}", "--burst", "--agent-image",
                    remote_image, "--agent-command", f"python -c '{PACED.format(delay=0)}'", "--agent-log",
                    str(tmp_path / "agent2.log"), "--agent-cpus", "1", timeout=300)
    assert done.returncode == 0, done.stderr
    document = json.loads(flateval("results", sid, "--redis", redis_url).stdout)
    assert document["status"] == "finished" and len(document["episodes"]) == 4
    assert all(e["outcome"] == "completed" for e in document["episodes"])


@on_engine
def test_a_container_stops_with_its_sigkilled_worker(engine, remote_image, redis_url, tmp_path):
    """No worker is left to stop it: the container still gets SIGTERM (through its CLI) and stops."""
    pidfile = tmp_path / "agent.pid"
    worker = subprocess.Popen([sys.executable, "-m", "flateval", "worker", "--redis", redis_url, "--queue",
                               "flateval-none", "--agent-image", remote_image, "--agent-command", REMOTE,
                               "--agent-log", str(tmp_path / "agent.log"), "--agent-pidfile", str(pidfile),
                               "--agent-cpus", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    owner = f"label={LABEL}={os.uname().nodename}:{worker.pid}"
    try:
        deadline = time.monotonic() + 120
        while not pidfile.exists():  # the agent answered its handshake
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert engine.run("ps", "-q", "--filter", owner).stdout.split()
        worker.kill()
        worker.wait()
        killed = time.monotonic()
        while engine.run("ps", "-q", "--filter", owner).stdout.split():  # still running
            assert time.monotonic() - killed < 5, "the container outlived its worker"
            time.sleep(0.1)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        engine.run("rm", "-f", *engine.run("ps", "-aq", "--filter", owner).stdout.split(), check=False)


def test_no_engine_or_no_image_is_one_line(small_test_set, tmp_path):
    done = flateval("run", "--agent-image", "flateval-test/none:0", "--test-set", str(small_test_set),
                    env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}, timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "needs a container engine, and none answered" in done.stderr, done.stderr
    done = flateval("run", "--agent-image", "flateval-test/none:0", "--test-set", str(small_test_set),
                    env={"FLATEVAL_CONTAINER_CLI": "no-such-docker"}, timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "no no-such-docker command" in done.stderr


@on_engine
def test_no_image_is_one_line(engine, small_test_set):
    done = flateval("run", "--agent-image", "flateval-test/none:0", "--test-set", str(small_test_set), timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "no image flateval-test/none:0 on Docker Engine" in done.stderr


def _pythons() -> list[tuple[str, Path]]:
    """One CPython installation per version 3.8-3.13 that this machine has as a whole prefix (pyenv's)."""
    found = []
    for version in PYTHONS:
        prefixes = sorted(Path.home().glob(f".pyenv/versions/{version}.*"))
        if prefixes and (prefixes[-1] / "bin" / "python").exists():
            found.append((version, prefixes[-1]))
    return found


@on_engine
def test_agent_bridge_runs_in_a_container_on_every_python(engine, base_image, tmp_path):
    """Each CPython 3.8-3.13 found here, mounted into the base image (which has only Debian's 3.11)
    and started by flateval's own container arguments, serves the bridge from what flateval brings
    in: agent_bridge in the working directory, pyzmq and msgpack from the deps folder."""
    pythons = _pythons()
    if not pythons:
        pytest.skip("no CPython 3.8-3.13 installation (pyenv's) on this machine to mount")
    say = []
    for version, prefix in pythons:
        container = AgentContainer(base_image, "/opt/python/bin/python -s -m agent_bridge.examples.do_nothing",
                                   tmp_path / "agent.log", engine, SandboxSpec.from_options(1, "1Gi"))
        container.name = f"flateval-python-{os.getpid()}-{version}"
        args = container.run_args()
        args[args.index(base_image):args.index(base_image)] = [
            "-v", f"{prefix}:/opt/python:ro", "-e", "LD_LIBRARY_PATH=/opt/python/lib"]
        with open(tmp_path / "agent.log", "ab") as log:
            process = subprocess.Popen([engine.cli, *args], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_handshake(container.endpoint, 60, exited=lambda: None if process.poll() is None else
                               f"python {version}: {(tmp_path / 'agent.log').read_text()[-300:]}")
        finally:
            engine.run("rm", "-f", container.name, check=False)
            process.wait()
        say.append(version)
    print("bridge served in a container on Python", " ".join(say))


def test_deps_folder_offline_from_a_wheel_folder(tmp_path, monkeypatch):
    """A host without PyPI prepares the folder from wheels fetched elsewhere; wheels that disagree on
    a shared file, or a folder missing one package, are one line, and nothing half-made is kept."""
    import zipfile

    from env_worker.container.bridge import BridgeDepsError, CACHE_ENV, WHEELS_ENV

    def wheel(name: str, files: dict[str, bytes]) -> None:
        with zipfile.ZipFile(tmp_path / "wheels" / name, "w") as archive:
            for path, data in files.items():
                archive.writestr(path, data)

    (tmp_path / "wheels").mkdir()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(WHEELS_ENV, str(tmp_path / "wheels"))
    wheel("pyzmq-26.2.1-cp38-cp38-manylinux2014_x86_64.whl",
          {"zmq/__init__.py": b"a", "zmq/_zmq.cpython-38-x86_64-linux-gnu.so": b"38", "pyzmq.dist-info/RECORD": b"1"})
    with pytest.raises(BridgeDepsError, match="no wheels of msgpack"):
        bridge_deps_dir()
    wheel("msgpack-1.1.0-cp38-cp38-manylinux2014_x86_64.whl", {"msgpack/__init__.py": b"m"})
    wheel("pyzmq-26.2.1-cp313-cp313-manylinux2014_x86_64.whl",
          {"zmq/__init__.py": b"a", "zmq/_zmq.cpython-313-x86_64-linux-gnu.so": b"313", "pyzmq.dist-info/RECORD": b"2"})
    deps = bridge_deps_dir()
    assert sorted(p.name for p in (deps / "zmq").iterdir()) == [
        "__init__.py", "_zmq.cpython-313-x86_64-linux-gnu.so", "_zmq.cpython-38-x86_64-linux-gnu.so"]
    assert not (deps / "pyzmq.dist-info").exists() and (deps / "msgpack" / "__init__.py").stat().st_mode & 0o004
    shutil.rmtree(deps)
    wheel("pyzmq-26.2.1-cp39-cp39-manylinux2014_x86_64.whl", {"zmq/__init__.py": b"b"})
    with pytest.raises(BridgeDepsError, match="differ in zmq/__init__.py"):
        bridge_deps_dir()
    assert list((tmp_path / "cache").iterdir()) == []
