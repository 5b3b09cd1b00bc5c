"""The compose cluster on a real engine (issue 24): docs/deploy.md's compose section, start to finish.

Builds the project's images on the base image made from Debian's archive, brings deploy/docker-compose.yml
up with Compose v2 (redis, 2 workers, 2 agents, exporter, prometheus), evaluates a small test set with
`flateval submit` from this host, compares every episode's score with `flateval run` on the same agent and
test set, checks the agent's fence from inside its container, and times `down`. Prints the times.

Network checks send nothing outside: names are resolved by the engine's own DNS, the one connection
attempted goes to the Redis container this test started, and "outside" is judged from the agent's
routes and the engine's own drop rule, not by sending traffic anywhere.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from env_worker.container.engine import Engine
from tests.container_engine import say

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

DEPLOY = REPO / "deploy"
FLATEVAL = str(Path(sys.executable).with_name("flateval"))
# Random actions seeded by the episode's env file: the same actions wherever and whenever that episode
# is played, and scores that differ from episode to episode (a perfect agent would compare only zeros).
SEEDED_AGENT = """
import random
import time
from agent_bridge import serve
from agent_bridge.actions import N_ACTIONS

class SeededByEnvFile:
    def reset(self, info):
        self.rng = random.Random(info["env_file"])
        self.n_agents = int(info["env"]["n_agents"])

    def act(self, observations, info):
        time.sleep(0.005)   # episodes long enough to stop a worker in the middle of one
        return {h: self.rng.randrange(N_ACTIONS) for h in range(self.n_agents)}

serve(SeededByEnvFile())
"""
PAIRS = 2

# Run inside an agent container: what it can resolve, reach and do. Prints one JSON document.
FENCE_PROBE = r"""
import json, os, socket, sys
redis_ip = sys.argv[1]
out = {}
out["resolves"] = {}
for name in ("redis", "exporter", "prometheus"):
    try:
        socket.getaddrinfo(name, None)
        out["resolves"][name] = True
    except socket.gaierror:
        out["resolves"][name] = False
s = socket.socket()
s.settimeout(2)
try:
    s.connect((redis_ip, 6379))
    out["redis_connect"] = "connected"
except OSError as exc:
    out["redis_connect"] = type(exc).__name__
routes = [line.split() for line in open("/proc/net/route").read().splitlines()[1:]]
out["routes"] = [(r[1], r[7]) for r in routes]   # destination, mask (little-endian hex)
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
out["uid"] = os.getuid()
out["cap_eff"] = status["CapEff"].strip()
out["no_new_privs"] = status["NoNewPrivs"].strip()
try:
    open("/agent/written", "w")
    out["root_writable"] = True
except OSError:
    out["root_writable"] = False
out["env"] = sorted(os.environ)
print(json.dumps(out))
"""


def _scores(results: dict) -> dict[str, tuple[float, float]]:
    return {e["env_file"]: (e["normalized_return"], e["percentage_complete"]) for e in results["episodes"]}


def test_compose_cluster_on_a_real_engine(container_engine: Engine, compose: list[str],
                                          base_image: str, small_test_set: Path, tmp_path: Path,
                                          request):
    engine = container_engine
    project = f"flateval-t{secrets.token_hex(3)}"
    test_set = tmp_path / "test-set"  # readable by the workers' uid 10001, as a host's would be
    shutil.copytree(small_test_set, test_set)
    for path in [test_set, *test_set.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    if os.geteuid() == 0:
        os.chown(recordings, 10001, 10001)  # the workers' uid, as docs/deploy.md says
    else:
        recordings.chmod(0o777)
    redis_port, prometheus_port = free_port(), free_port()
    env_file = tmp_path / "compose.env"
    ours = {"FLATEVAL_PROJECT": project, "FLATEVAL_PAIRS": str(PAIRS), "FLATEVAL_BASE_IMAGE": base_image,
            "REDIS_PORT": str(redis_port), "PROMETHEUS_PORT": str(prometheus_port),
            "FLATEVAL_TEST_SET": str(test_set), "FLATEVAL_RECORDINGS": str(recordings)}
    env_file.write_text("".join(f"{k}={v}\n" for k, v in ours.items()))
    # the documented step: passwords and limits that fit this machine, added to what is set
    subprocess.run(["sh", str(DEPLOY / "init-env.sh"), str(env_file)], check=True, capture_output=True)
    settings = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert float(settings["FLATEVAL_AGENT_CPUS"]) <= os.cpu_count()
    # the documented way to run another agent: an override file
    agent_script = tmp_path / "seeded_agent.py"
    agent_script.write_text(SEEDED_AGENT)
    agent_script.chmod(0o644)
    override = tmp_path / "agent.yml"
    override.write_text("services:\n  agent:\n    command: [python, /opt/seeded_agent.py]\n"
                        f"    volumes: ['{agent_script}:/opt/seeded_agent.py:ro']\n")
    # the variables of the env file win over ours (compose prefers the shell's)
    shell = {k: v for k, v in os.environ.items() if k not in settings and not k.startswith("COMPOSE_")}
    dc = [*compose, "-f", str(DEPLOY / "docker-compose.yml"), "-f", str(override), "--env-file", str(env_file)]

    def run(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=DEPLOY,
                              env=env or shell)
        assert done.returncode == 0, f"{' '.join(args[:4])}... exited {done.returncode}:\n{done.stderr[-3000:]}"
        return done

    times: dict[str, float] = {}

    def timed(label: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        started = time.monotonic()
        done = run(*args, **kwargs)
        times[label] = time.monotonic() - started
        return done

    run(*dc, "config", "--quiet")  # valid Compose v2, with this env file
    up = False
    images = run(*dc, "config", "--images").stdout.split()
    before = _image_ids(engine, images)
    try:
        timed("build", *dc, "build")
        up = True
        timed("up", *dc, "up", "-d", "--wait", "--wait-timeout", "300")

        # --- a submission from this host, as docs/deploy.md shows it
        host_env = {**os.environ,
                    "FLATEVAL_REDIS_URL": f"redis://:{settings['REDIS_PASSWORD']}@127.0.0.1:{redis_port}/0"}
        started = time.monotonic()
        sid = run(FLATEVAL, "submit", "--test-set", str(test_set), env=host_env).stdout.strip()
        cluster = _finished(run, sid, host_env)
        times["one evaluation"] = time.monotonic() - started
        say(request.config, "compose cluster, the submission's timing: " + json.dumps(cluster["timing"])
            + "; episodes (s): " + ", ".join(f"{e['duration_s']:.2f}" for e in cluster["episodes"]))

        # --- the same agent on the same test set with `flateval run`: the same score, episode by episode
        local = tmp_path / "local.json"
        run(FLATEVAL, "run", "--agent", f"{sys.executable} {agent_script}", "--test-set", str(test_set), "--workers", str(PAIRS),
            "--output", str(local), env=os.environ.copy(), timeout=600)
        local_scores = _scores(json.loads(local.read_text()))
        assert _scores(cluster) == local_scores
        assert len(set(local_scores.values())) > 1, local_scores  # a comparison that can fail

        # --- a worker stopped in the middle of an episode finishes it, and nothing is counted twice
        sid = run(FLATEVAL, "submit", "--test-set", str(test_set), env=host_env).stdout.strip()
        busy = _busy_worker(host_env["FLATEVAL_REDIS_URL"])
        started = time.monotonic()
        engine.run("stop", "-t", "120", busy.split(":")[0], timeout_s=180)  # a container's hostname is its id
        times["worker stop (in an episode)"] = time.monotonic() - started
        assert engine.run("inspect", "-f", "{{.State.ExitCode}}", busy.split(":")[0]).stdout.strip() == "0"
        again = _finished(run, sid, host_env)
        assert sorted(e["env_file"] for e in again["episodes"]) == sorted(local_scores)  # each once
        assert _scores(again) == local_scores
        assert any(e["worker"] == busy for e in again["episodes"]), "the stopped worker's episode was not its own"
        run(*dc, "start", "worker")

        # --- Prometheus (Debian's, on the base image) finds the exporter and every worker by DNS
        assert _prometheus_targets_up(prometheus_port) == {"flateval-exporter": 1, "flateval-workers": PAIRS}

        # --- the agent's fence, seen from inside its container
        redis_container = f"{project}-redis-1"
        redis_ip = engine.run("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                              redis_container).stdout.strip()
        agent_container = f"{project}-agent-1"
        started = time.monotonic()
        probe = json.loads(engine.run("exec", agent_container, "python", "-c", FENCE_PROBE, redis_ip,
                                      timeout_s=120).stdout)
        times["agent fence probe"] = time.monotonic() - started
        assert probe["resolves"] == {"redis": False, "exporter": False, "prometheus": False}, probe
        assert probe["redis_connect"] != "connected", probe  # the engine drops it (TimeoutError here)
        assert not any("REDIS" in name for name in probe["env"]), probe["env"]
        assert probe["uid"] == 10001 and probe["cap_eff"] == "0000000000000000" and probe["no_new_privs"] == "1"
        assert probe["root_writable"] is False
        agents_net = f"{project}_agents"
        network = json.loads(engine.run("network", "inspect", agents_net).stdout)[0]
        assert network["Internal"] is True
        assert set(network["Containers"]) >= {c for c in _container_ids(engine, project, "agent")}
        assert not set(network["Containers"]) & set(_container_ids(engine, project, "redis"))
        say(request.config, f"agent routes (destination, mask): {probe['routes']}")
        # Docker 20.10 gives an internal network a default route to its bridge, and drops whatever
        # leaves the subnet there: the rule that dropped the Redis connection above drops the rest
        rules = _iptables()
        if rules is not None:
            bridge = "br-" + network["Id"][:12]
            subnet = network["IPAM"]["Config"][0]["Subnet"]
            assert any(f"-i {bridge}" in rule and f"! -d {subnet}" in rule and rule.endswith("-j DROP")
                       for rule in rules), f"no drop rule for {bridge} leaving {subnet}"
        elif any(dest == "00000000" for dest, _ in probe["routes"]):
            say(request.config, "the engine's rules cannot be read here (not root): that traffic leaving the "
                                "agents network is dropped rests on the Redis connection above")

        # --- an agent that is PID 1 without an init stops on SIGTERM at once (the other side of `init: true`)
        name = f"{project}-pid1"
        engine.run("run", "-d", "--name", name, "--network", "none", "flateval/example-agent:0.1.0")
        try:
            _wait_for_log(engine, name, "serving on")
            started = time.monotonic()
            engine.run("stop", "-t", "10", name)
            times["agent stop (PID 1, no init)"] = time.monotonic() - started
            assert engine.run("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0"
            assert times["agent stop (PID 1, no init)"] < 3.0
        finally:
            engine.run("rm", "-f", name, check=False)

        timed("down", *dc, "down", "-v")
        up = False
        assert times["down"] < 20, times
    finally:
        if up:
            subprocess.run([*dc, "down", "-v", "--timeout", "5"], cwd=DEPLOY, env=shell, capture_output=True,
                           timeout=300)
        # the images this build replaced would pile up run after run (the build cache stays)
        replaced = set(before.values()) - set(_image_ids(engine, images).values())
        if replaced:
            engine.run("rmi", *replaced, check=False, timeout_s=120)  # refused for any still in use
        if times:
            say(request.config, "compose cluster, measured: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    say(request.config, "compose cluster, per-episode scores (normalized return, % done), cluster = flateval run: "
         + "; ".join(f"{k} {v[0]:.4f} {v[1]:.0%}" for k, v in sorted(_scores(cluster).items())))


def _image_ids(engine: Engine, tags: list[str]) -> dict[str, str]:
    """The image id each of these tags names now (tags that name none are left out)."""
    ids = {}
    for tag in tags:
        done = engine.run("image", "inspect", "--format", "{{.Id}}", tag, check=False)
        if done.returncode == 0:
            ids[tag] = done.stdout.strip()
    return ids


def _finished(run, sid: str, env: dict, timeout_s: float = 300) -> dict:
    """The submission's results once `flateval status` says it ended (polled, with the time left)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = run(FLATEVAL, "status", sid, env=env).stdout
        if " finished " in status or " failed " in status or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert " finished " in status, status
    results = json.loads(run(FLATEVAL, "results", sid, env=env).stdout)
    assert results["status"] == "finished" and results["n_episodes"] == 4, results["status"]
    return results


def _prometheus_targets_up(port: int, timeout_s: float = 60) -> dict[str, int]:
    """Prometheus's healthy targets per job, asked on its loopback port until every one is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=10) as response:
            targets = json.load(response)["data"]["activeTargets"]
        up: dict[str, int] = {}
        for target in targets:
            up[target["labels"]["job"]] = up.get(target["labels"]["job"], 0) + (target["health"] == "up")
        if all(target["health"] == "up" for target in targets) or time.monotonic() > deadline:
            return up
        time.sleep(0.5)


def _busy_worker(redis_url: str, timeout_s: float = 120) -> str:
    """The name (<container id>:<pid>) of a worker in the middle of an episode, asked of RQ itself."""
    import redis
    from rq import Worker

    conn = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for worker in Worker.all(connection=conn):
                if worker.get_state() == "busy":  # RQ's own state: in perform_job
                    return worker.name
            time.sleep(0.02)
    finally:
        conn.close()
    raise AssertionError(f"no worker took an episode within {timeout_s} s")


def _container_ids(engine: Engine, project: str, service: str) -> list[str]:
    return engine.run("ps", "-q", "--no-trunc", "--filter", f"label=com.docker.compose.project={project}",
                      "--filter", f"label=com.docker.compose.service={service}").stdout.split()


def _wait_for_log(engine: Engine, container: str, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        logs = engine.run("logs", container, check=False)
        if text in logs.stdout + logs.stderr:
            return
        time.sleep(0.1)
    raise AssertionError(f"{container} did not log {text!r} within {timeout_s} s")


def _iptables() -> list[str] | None:
    """The host's filter rules (read only), or None where they cannot be read."""
    iptables = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
    if iptables is None or os.geteuid() != 0:
        return None
    done = subprocess.run([iptables, "-S"], capture_output=True, text=True, timeout=30)
    return done.stdout.splitlines() if done.returncode == 0 else None
