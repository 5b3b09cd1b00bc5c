"""Per-episode resource report: the agent's CPU seconds and peak memory in each result record and in
the metrics, so a participant sees why they were slow."""

from __future__ import annotations

import json
import sys

from prometheus_client import REGISTRY

from env_worker.metrics import MetricsObserver
from scoring.episode import EpisodeResult
from tests.test_run import flateval
from tests.test_sandbox import BURN  # 0.4 s of CPU and 96 MiB in planning



def test_each_episode_records_the_agents_cpu_and_peak_memory(small_test_set, tmp_path):
    script = tmp_path / "burn.py"
    script.write_text(BURN)
    out = tmp_path / "results.json"
    done = flateval("run", "--agent", f"{sys.executable} {script}", "--test-set", str(small_test_set), "--workers", "1",
                    "--output", str(out))
    assert done.returncode == 0, done.stderr
    for episode in json.loads(out.read_text())["episodes"]:
        usage = episode["agent_usage"]
        assert 0.38 <= usage["cpu_s"] < 2.5, usage
        assert usage["peak_memory_bytes"] >= 96 << 20, usage


def test_the_metrics_observe_the_agents_usage():
    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    before = (sample("flateval_agent_cpu_seconds_count"), sample("flateval_agent_peak_memory_bytes_sum"))
    result = EpisodeResult(env_file="Test_0/Level_0.pkl", test=0, level=0, outcome="completed", normalized_return=0.0,
                           percentage_complete=1.0, steps=3, cumulative_reward=0.0, duration_s=0.1,
                           agent_usage={"cpu_s": 1.5, "peak_memory_bytes": 1 << 30, "source": "cgroup"})
    MetricsObserver().episode_ended(result)
    assert sample("flateval_agent_cpu_seconds_count") == before[0] + 1
    assert sample("flateval_agent_peak_memory_bytes_sum") == before[1] + (1 << 30)
