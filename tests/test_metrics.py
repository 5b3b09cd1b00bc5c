"""Metrics: every name on /metrics, the dashboard's PromQL against a real Prometheus server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tests.conftest import REPO, free_port, slow_agent
from tests.test_run import FLATEVAL, flateval

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "flateval.json"
CONTRACT_NAMES = [
    "flateval_episodes_total", "flateval_steps_total", "flateval_agent_response_seconds",
    "flateval_env_step_seconds", "flateval_episode_duration_seconds", "flateval_episode_normalized_return",
    "flateval_agent_timeouts_total", "flateval_queue_jobs", "flateval_workers", "flateval_submissions",
    "flateval_submission_mean_normalized_return",
]

def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def base_name(sample: str) -> str:
    return re.sub(r"_(bucket|sum|count|created)$", "", sample)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def sample_value(text: str, name: str, labels: str = "") -> float | None:
    for line in text.splitlines():
        if line.startswith(name + (labels if labels else " ")) or (not labels and line.startswith(name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return None


def served_names(text: str) -> set[str]:
    return {base_name(line.split("{")[0].split(" ")[0]) for line in text.splitlines()
            if line.startswith("flateval_")}


def test_run_serves_every_metric_of_the_contract(small_test_set, tmp_path):
    agent, _ = slow_agent(tmp_path, delay=0.008)
    port = free_port()
    out = tmp_path / "results.json"
    run = subprocess.Popen([*FLATEVAL, "run", "--agent", agent, "--test-set",
                            str(small_test_set), "--workers", "2", "--metrics-port", str(port), "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    responses = 0.0
    try:
        while run.poll() is None and not (set(CONTRACT_NAMES) <= seen and responses > 0):
            try:
                text = scrape(port)
            except OSError:
                time.sleep(0.05)  # the server is not up yet: poll again
                continue
            seen |= served_names(text)
            responses = sample_value(text, "flateval_agent_response_seconds_count", '{phase="step"}') or 0.0
            time.sleep(0.05)  # polling a live endpoint while the run goes on
        assert set(CONTRACT_NAMES) <= seen, set(CONTRACT_NAMES) - seen
        assert responses > 0
        dashboard_names = {base_name(n) for e in dashboard_exprs() for n in re.findall(r"flateval_\w+", e)}
        assert dashboard_names <= seen | {"flateval_step_deadline_seconds"}, dashboard_names - seen
    finally:
        _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr


# ------------------------------------------------------------------------------ real Prometheus

def _prometheus() -> str:
    binary = shutil.which("prometheus")
    if not binary:
        pytest.skip("cannot run: no `prometheus` binary (Debian package `prometheus`; .ci/run installs it)")
    return binary


def _query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)  # polling an external server for a state it reaches on its own clock
    raise AssertionError(f"timed out waiting for {what}")


def test_dashboard_queries_return_data_from_a_real_prometheus(redis_url, redis_conn, small_test_set, tmp_path):
    binary = _prometheus()
    exporter_port, worker_port, prom_port = free_port(), free_port(), free_port()
    agent, _ = slow_agent(tmp_path, delay=0.008)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: exporter\n    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
        f"  - job_name: workers\n    static_configs: [{{targets: ['127.0.0.1:{worker_port}']}}]\n")
    env = {**os.environ}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    processes = [
        subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{prom_port}"],
                         stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w")),
        subprocess.Popen([*FLATEVAL, "exporter", "--redis", redis_url, "--port", str(exporter_port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env),
    ]
    base = f"http://127.0.0.1:{prom_port}"
    try:
        def exporter_up() -> bool:
            try:
                result = _query(base, 'up{job="exporter"}')["data"]["result"]
            except OSError:
                return False
            return bool(result) and result[0]["value"][1] == "1"

        _wait(exporter_up, 60, "Prometheus to scrape the exporter")
        submitted = flateval("submit", "--redis", redis_url, "--test-set", str(small_test_set))
        assert submitted.returncode == 0, submitted.stderr
        sid = submitted.stdout.strip()
        processes.append(subprocess.Popen(
            [*FLATEVAL, "worker", "--redis", redis_url, "--queue", f"flateval-{sid}", "--agent-command",
             agent, "--agent-log", str(tmp_path / "a.log"), "--metrics-port", str(worker_port)],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.log", "w"), env=env))
        _wait(lambda: redis_conn.hget(f"flateval:submission:{sid}", "status") == b"finished", 120,
              "the submission to finish")
        document = json.loads(flateval("results", sid, "--redis", redis_url).stdout)
        episodes = document["episodes"]

        def counted() -> bool:
            result = _query(base, "sum(flateval_episodes_total)")["data"]["result"]
            return bool(result) and float(result[0]["value"][1]) == len(episodes)

        _wait(counted, 60, "Prometheus to scrape every episode")
        for expr in dashboard_exprs():
            def answered(expr=expr) -> bool:
                answer = _query(base, expr)
                assert answer["status"] == "success", (expr, answer)
                return any(r["value"][1] != "NaN" for r in answer["data"]["result"])

            _wait(answered, 20, f"data for {expr}")

        by_outcome = {r["metric"]["outcome"]: float(r["value"][1]) for r in
                      _query(base, "sum by (outcome) (flateval_episodes_total)")["data"]["result"]}
        expected = {o: float(sum(e["outcome"] == o for e in episodes)) for o in by_outcome}
        assert by_outcome == expected
        steps = float(_query(base, "sum(flateval_steps_total)")["data"]["result"][0]["value"][1])
        assert steps == sum(e["steps"] for e in episodes)
        responses = float(_query(base, 'sum(flateval_agent_response_seconds_count{phase="step"})')
                          ["data"]["result"][0]["value"][1])
        assert responses == sum(e["agent_response"]["count"] for e in episodes)
        def final_score() -> bool:  # the exporter's latest scrape may predate the last result
            score = _query(base, f'flateval_submission_mean_normalized_return{{submission="{sid}"}}')["data"]["result"]
            return bool(score) and abs(float(score[0]["value"][1]) - document["score"]["mean_normalized_return"]) < 1e-9

        _wait(final_score, 20, "the exporter's final score for the submission")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
