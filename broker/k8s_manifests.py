"""Per-submission Kubernetes objects: the evaluation workload of one submission, scaled by KEDA.

One object per submission, a KEDA ``ScaledJob`` on the submission's RQ queue (the Redis list
``rq:queue:flateval-<id>``). Each Job is one pod holding

* the participant's agent as a native sidecar (an init container with ``restartPolicy: Always``,
  Kubernetes >= 1.29): started first, it binds 127.0.0.1 only, gets the challenge's resources
  (4 CPU, 15 GiB for neurips2020), no Redis credentials, no service-account token, no service links,
  the `restricted` security context with a read-only root filesystem (its scratch space is a
  size-limited /tmp, also its HOME); with ``--runtime-class gvisor`` (deploy/k8s/overlays/gvisor)
  the whole pod runs under gVisor;
* the env worker, ``flateval worker --burst`` on that one queue, talking to the agent over localhost.

A worker plays episodes until the queue is empty and exits; the Job then completes and Kubernetes
stops the sidecar. KEDA never deletes a running Job to scale down, so no episode is cut short by
scaling; with no queued episode there is no Job (scale to zero). The termination grace period covers
one whole episode (its deadlines), so a drain, an eviction or a deleted ScaledJob lets the running
episode finish: SIGTERM is RQ's warm shutdown. The shared objects (Redis, the exporter, the
NetworkPolicies, the KEDA TriggerAuthentication) are in deploy/k8s/base.

    flateval k8s-manifests SUBMISSION_ID AGENT_IMAGE | kubectl apply -f -
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Sequence

import yaml

from broker.store import queue_list_key, queue_name
from core.challenge import AgentResources, TimeLimits
from core.cpu_share import THREAD_VARIABLES

WORKER_IMAGE = "flateval/worker:0.1.0"
NAMESPACE = "flateval"
REDIS_SECRET = "flateval-redis"
"""Secret with keys ``url`` (the workers' FLATEVAL_REDIS_URL), ``password`` and ``address`` (KEDA)."""
TRIGGER_AUTH = "flateval-redis"
"""KEDA TriggerAuthentication (deploy/k8s/base/keda.yaml) reading that secret."""
TEST_SET_CLAIM = "flateval-test-set"
TEST_SET_DIR = "/test-set"
RECORD_CLAIM = "flateval-recordings"
"""PersistentVolumeClaim (ReadWriteMany) every evaluation pod records its episodes into (docs/audit.md)."""
RECORD_DIR = "/recordings"
WORKER_GID = 10001  # the worker image's group (deploy/docker/worker.Dockerfile): owns what it records
AGENT_PORT = 8086
METRICS_PORT = 9109

NEURIPS2020_MAX_EPISODE_STEPS = 3722
"""The largest ``max_episode_steps`` of the neurips2020-debug test set (Test_13, 400 trains, 150x150):
a fact of the test set, not a rule of the challenge."""


def episode_bound_s(limits: TimeLimits, max_episode_steps: int = NEURIPS2020_MAX_EPISODE_STEPS,
                    margin_s: float = 60) -> int:
    """The longest an episode can last under the challenge's deadlines (planning, then every step at
    its limit), plus a margin for loading the env and storing the result. Under neurips2020's
    limits: 18,970 s (300 s planning + 3,722 steps x 5 s + 60 s). An episode wall limit (``episode_s``)
    caps it, and is the bound where there is no planning or step deadline (FAB's behaviour)."""
    bound = math.inf if limits.planning_s is None or limits.step_s is None else \
        limits.planning_s + max_episode_steps * limits.step_s
    if limits.episode_s is not None:
        bound = min(bound, limits.episode_s)
    return int(math.ceil(bound + margin_s))

_SID = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_MAX_NAME = 52  # Job names get a suffix from KEDA and must stay a valid label value (63)

LABELS = {"app.kubernetes.io/name": "flateval", "app.kubernetes.io/part-of": "flateval"}


def object_name(submission_id: str) -> str:
    return f"flateval-{submission_id}"


def _check(submission_id: str, agent_image: str, max_replicas: int, grace_s: int) -> None:
    if not _SID.match(submission_id) or len(object_name(submission_id)) > _MAX_NAME:
        raise ValueError(f"submission id {submission_id!r} cannot name Kubernetes objects "
                         f"(lowercase letters, digits and '-', at most {_MAX_NAME - len('flateval-')} characters)")
    if not agent_image or any(c.isspace() for c in agent_image):
        raise ValueError(f"agent image {agent_image!r} is not an image reference")
    if max_replicas < 1:
        raise ValueError("max_replicas must be at least 1")
    if grace_s < 1:
        raise ValueError("grace_s must be positive")


def agent_thread_env(given: Mapping[str, str]) -> list[dict[str, Any]]:
    """The agent container's variables: `given` as they are, and each thread variable it does not
    set from the container's own CPU limit. A container limited to 4 CPUs sees every core of its
    node, and torch, BLAS and numexpr would start a thread per core against a 4-CPU quota;
    Kubernetes rounds the limit up to whole cores (500m: 1 thread), as `core.cpu_share.threads_for`."""
    def limit() -> dict[str, Any]:  # one object per variable: no YAML anchors in the output
        return {"resourceFieldRef": {"containerName": "agent", "resource": "limits.cpu", "divisor": "1"}}

    return [*({"name": name, "value": value} for name, value in given.items()),
            *({"name": name, "valueFrom": limit()} for name in THREAD_VARIABLES if name not in given)]


def _restricted(read_only_root: bool) -> dict[str, Any]:
    """A container security context that passes the `restricted` Pod Security Standard."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
            "readOnlyRootFilesystem": read_only_root, "seccompProfile": {"type": "RuntimeDefault"}}


def submission_manifests(
    submission_id: str,
    agent_image: str,
    *,
    namespace: str = NAMESPACE,
    worker_image: str = WORKER_IMAGE,
    cpu: str = "4",
    memory: str = "15Gi",
    disk: str = AgentResources.disk,
    max_replicas: int = 10,
    grace_s: int | None = None,
    worker_cpu: str = "1",
    worker_memory: str = "2Gi",
    test_set_claim: str | None = TEST_SET_CLAIM,
    record_claim: str | None = RECORD_CLAIM,
    image_pull_secrets: Sequence[str] = (),
    runtime_class: str | None = None,
    agent_env: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The objects that evaluate one submission: a KEDA ScaledJob (the pod template inside it).

    `cpu`/`memory` are the agent container's requests and limits (the challenge's agent resources);
    `disk` its ephemeral storage, requested and limited, and the size limit of its /tmp (its only
    writable space: the kubelet evicts the pod past it);
    `worker_cpu`/`worker_memory` the env worker's. `test_set_claim` is a PersistentVolumeClaim holding
    the test set (mounted read-only at /test-set); None when the worker image carries the test set at
    /test-set itself. `record_claim` is a PersistentVolumeClaim every episode is recorded into (mounted
    read-write at /recordings, ``FLATEVAL_RECORD_DIR``); None: record only what a submission asks for,
    where it asks. `grace_s` is the pod's termination grace period: at least one episode (default:
    one worst-case episode under the default time limits, `episode_bound_s(TimeLimits())`).
    `runtime_class` runs the pod under that RuntimeClass (``gvisor``: deploy/k8s/overlays/gvisor).
    `agent_env` gives the agent more variables (the host's ``OMP_NUM_THREADS``...); the thread
    variables it does not give follow the agent's CPU limit (`agent_thread_env`).
    """
    grace_s = episode_bound_s(TimeLimits()) if grace_s is None else grace_s
    _check(submission_id, agent_image, max_replicas, grace_s)
    name = object_name(submission_id)
    labels = {**LABELS, "flateval.io/submission": submission_id}
    pod_labels = {**labels, "app.kubernetes.io/component": "evaluation"}
    endpoint = f"tcp://127.0.0.1:{AGENT_PORT}"

    agent = {
        "name": "agent",
        "image": agent_image,
        # native sidecar: started before the worker, stopped after it, never counted for Job completion
        "restartPolicy": "Always",
        # the participant's container learns where to listen and nothing else: no Redis URL, no secret
        "env": [{"name": "FLATEVAL_AGENT_BIND", "value": endpoint}, {"name": "HOME", "value": "/tmp"},
                *agent_thread_env(agent_env or {})],
        "resources": {"requests": {"cpu": cpu, "memory": memory, "ephemeral-storage": disk},
                      "limits": {"cpu": cpu, "memory": memory, "ephemeral-storage": disk}},
        "securityContext": _restricted(read_only_root=True),
        "volumeMounts": [{"name": "agent-tmp", "mountPath": "/tmp"}],
    }
    worker_mounts = [{"name": "worker-tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "worker-tmp", "emptyDir": {}},
                                     {"name": "agent-tmp", "emptyDir": {"sizeLimit": disk}}]
    if test_set_claim:
        worker_mounts.append({"name": "test-set", "mountPath": TEST_SET_DIR, "readOnly": True})
        volumes.append({"name": "test-set", "persistentVolumeClaim": {"claimName": test_set_claim, "readOnly": True}})
    record_env = []
    if record_claim:
        worker_mounts.append({"name": "recordings", "mountPath": RECORD_DIR})
        volumes.append({"name": "recordings", "persistentVolumeClaim": {"claimName": record_claim}})
        record_env.append({"name": "FLATEVAL_RECORD_DIR", "value": RECORD_DIR})
    worker = {
        "name": "worker",
        "image": worker_image,
        "command": ["flateval", "worker", "--burst"],
        "env": [
            {"name": "FLATEVAL_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": REDIS_SECRET, "key": "url"}}},
            {"name": "FLATEVAL_QUEUES", "value": queue_name(submission_id)},
            {"name": "FLATEVAL_AGENT_ENDPOINT", "value": endpoint},
            {"name": "FLATEVAL_METRICS_PORT", "value": str(METRICS_PORT)},
            {"name": "FLATEVAL_METRICS_HOST", "value": "0.0.0.0"},  # Prometheus scrapes the pod's address
            {"name": "FLATEVAL_TEST_SET_DIR", "value": TEST_SET_DIR},
            *record_env,
        ],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": worker_cpu, "memory": worker_memory},
                      "limits": {"cpu": worker_cpu, "memory": worker_memory}},
        "securityContext": _restricted(read_only_root=True),
        "volumeMounts": worker_mounts,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": grace_s,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # fsGroup: the recordings volume is writable by the worker's group
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                            **({"fsGroup": WORKER_GID} if record_claim else {})},
        "initContainers": [agent],
        "containers": [worker],
        "volumes": volumes,
    }
    if image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in image_pull_secrets]
    if runtime_class:
        pod_spec["runtimeClassName"] = runtime_class
    template = {
        "metadata": {
            "labels": pod_labels,
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(METRICS_PORT),
                "prometheus.io/path": "/metrics",
                # node autoscalers must not evict a pod in the middle of an episode
                "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
                "karpenter.sh/do-not-disrupt": "true",
            },
        },
        "spec": pod_spec,
    }
    scaled_job = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "jobTargetRef": {"parallelism": 1, "completions": 1, "backoffLimit": 1, "template": template},
            "pollingInterval": 10,
            "minReplicaCount": 0,
            "maxReplicaCount": max_replicas,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 5,
            # updating the ScaledJob leaves running Jobs alone (the default strategy deletes them)
            "rollout": {"strategy": "gradual"},
            # new Jobs = min(queued episodes / listLength, maxReplicaCount) - Jobs still running
            "scalingStrategy": {"strategy": "default"},
            "triggers": [{
                "type": "redis",
                "name": "episodes-queued",
                "metadata": {
                    "listName": queue_list_key(submission_id),
                    "listLength": "1",
                    "activationListLength": "0",
                    "databaseIndex": "0",
                },
                "authenticationRef": {"name": TRIGGER_AUTH},
            }],
        },
    }
    return [scaled_job]


def to_yaml(objects: Iterable[dict[str, Any]]) -> str:
    """A multi-document YAML stream, keys in the order built (kubectl apply -f - reads it)."""
    return yaml.safe_dump_all(list(objects), sort_keys=False, default_flow_style=False, width=120)
