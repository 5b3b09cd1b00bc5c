"""`flateval run`: a whole local cluster for one submission, started and stopped by us.

1. plan the episodes (a test set's, or a gymnasium env's; done by the caller), name the submission;
2. start N `flateval worker` processes, each starting and supervising one agent from ``--agent``:
   first, since an agent's start-up (an interpreter importing torch and flatland) is the longest wait;
3. start the embedded Redis (or reach the one given), create the submission; once every pair
   answered its handshake, enqueue the episodes (timing starts here);
4. follow the results in Redis (progress bar) until the submission ends or its time runs out;
5. stop every process we started, by pid, and return the results document.

Steps 1-2 live in `flateval.local_cluster`, which loads nothing heavy; 3-4 in
`flateval.local_evaluation` (redis, rq, prometheus), loaded while the agents start.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

from broker.keys import new_submission_id, queue_name
from broker.plan import SubmissionPlan
from core.settings import RunSettings
from flateval.local_cluster import LocalCluster, RunError, check_hideable, sandbox_args, start_pairs
from flateval.run_folders import make_run_dir, reap_dead_runs

if TYPE_CHECKING:
    from broker.store import Submission

__all__ = ["RunError", "run_local"]


def run_local(settings: RunSettings, plan: SubmissionPlan,
              on_progress: Callable[[list[dict], Submission], None] | None = None,
              on_notice: Callable[[str], None] | None = None, hurry: threading.Event | None = None) -> dict:
    """Evaluate one submission (`flateval.planning.plan_run`) on a local cluster; return the results
    document. `on_progress` gets the results so far and the submission's record whenever a result
    arrives; `on_notice`, once the agents run, the line saying what each agent gets, then the one
    saying how they are sandboxed; `hurry`, once set, cuts short every wait for a process to end on
    its own (a stop asked for again).

    Raises `RunError`: before the submission exists without a document; after, with its document
    (failed: an agent that could not start; cancelled: SIGINT, or SIGTERM turned into one by the CLI)."""
    check_hideable(settings, plan)
    reap_dead_runs()  # what runs killed before us left: their folders and embedded Redis servers
    cluster = LocalCluster(make_run_dir(), hurry=hurry or threading.Event(), agent_image=settings.agent_image)
    try:
        sid = new_submission_id()
        redis_url = settings.redis_url or cluster.embedded_redis_url
        cluster.agent_args, cluster.share = sandbox_args(settings, plan, cluster.run_dir)
        start_pairs(cluster, settings, redis_url, queue_name(sid))  # they wait for Redis: it starts in a moment
        if not settings.redis_url:
            cluster.start_redis()
        from flateval.local_evaluation import evaluate  # redis, rq, prometheus: loaded while the agents start

        return evaluate(cluster, settings, plan, sid, redis_url, on_progress, on_notice)
    finally:
        cluster.stop()
