"""Agents that share cores (issue 23): each agent its fair share of the machine, its thread pools
sized to it, and an explicit --agent-cpus taken as it is."""

from __future__ import annotations

import json
import os
import sys

import pytest

from core.cpu_share import THREAD_VARIABLES, fair_share, thread_variables, threads_for
from tests.test_run import flateval

REPORTER = r'''
import json, os
from agent_bridge import serve

print("CORES " + json.dumps({"affinity": sorted(os.sched_getaffinity(0)),
                             **{name: os.environ.get(name) for name in %r}}), flush=True)


class DoNothing:
    def reset(self, info):
        pass

    def act(self, observations, info):
        return {}


serve(DoNothing())
''' % (THREAD_VARIABLES,)


# ------------------------------------------------------------------------------------ units

def test_the_agents_share_the_cores_fairly_once_they_do_not_fit():
    assert fair_share(4, 2, cores=2).cpus == 1  # 2 pairs on 2 cores: a core each
    assert fair_share(4, 2, cores=2).line() == "agents get 1 core each of the challenge's 4: 2 pairs on 2 cores"
    assert fair_share(4, 1, cores=2).cpus == 1  # the worker gets the other core
    assert fair_share(4, 3, cores=8).cpus == 2  # disjoint: 6 cores for the agents, 2 for the workers
    assert fair_share(4, 5, cores=2).cpus == 1  # never less than one
    assert fair_share(4, 2, cores=8).cpus == 4 and not fair_share(4, 2, cores=8).reduced  # they fit
    assert fair_share(0.5, 2, cores=2).cpus == 0.5
    explicit = fair_share(2, 2, cores=2, explicit=True)  # --agent-cpus wins
    assert explicit.cpus == 2 and explicit.line() == "agents get 2 cores each (--agent-cpus): 2 pairs on 2 cores"


def test_thread_pools_follow_the_share_unless_the_host_sizes_them():
    assert [threads_for(c) for c in (0.25, 1, 1.5, 4)] == [1, 1, 2, 4]
    assert thread_variables(1) == {name: "1" for name in THREAD_VARIABLES}
    assert thread_variables(2, {"OMP_NUM_THREADS": "8"}) == {"OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": "2",
                                                             "OPENBLAS_NUM_THREADS": "2", "NUMEXPR_NUM_THREADS": "2"}


# ------------------------------------------------------------------------------------ a real run

def test_each_agent_flateval_starts_sees_its_share_in_its_affinity_and_thread_variables(small_test_set, tmp_path):
    """`flateval run --workers 2` with the challenge's default 4 CPUs: each agent's affinity holds
    its share of this machine's cores, disjoint from the other's while there are cores enough,
    and its thread variables say as many threads."""
    script = tmp_path / "reporter.py"
    script.write_text(REPORTER)
    tmp_path.chmod(0o755)
    script.chmod(0o644)
    out = tmp_path / "results.json"
    host = {name: "" for name in THREAD_VARIABLES}  # the host sets none of them
    done = flateval("run", "--agent", f"{sys.executable} {script}", "--test-set", str(small_test_set),
                    "--workers", "2", "--output", str(out), env=host, timeout=180)
    assert done.returncode == 0, done.stderr
    share = fair_share(4, 2)
    assert share.line() in done.stderr.splitlines(), done.stderr
    logs = json.loads(out.read_text())["agent_logs"]
    seen = [json.loads(line.split(" ", 1)[1]) for log in logs.values() for line in log.splitlines()
            if line.startswith("CORES ")]
    assert len(seen) == 2, logs
    for agent in seen:
        assert len(agent["affinity"]) == min(share.threads, len(os.sched_getaffinity(0))), agent
        assert {agent[name] for name in THREAD_VARIABLES} == {str(len(agent["affinity"]))}, agent
    if 2 * share.threads <= len(os.sched_getaffinity(0)):
        assert not set(seen[0]["affinity"]) & set(seen[1]["affinity"]), seen
    else:
        pytest.skip(f"one core: the agents share it ({seen})")
