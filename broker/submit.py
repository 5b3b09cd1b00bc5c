"""Create a submission and fan its episodes out as RQ jobs (one job per episode, JSON-serialized).

Without a completion gate every episode is enqueued at once, biggest env files first so that the
longest episodes do not end up alone at the tail of the run. With a gate, tests are released one at
a time, in order (`broker.stop_rules` releases the next one when the gate passes).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from typing import Sequence

import redis
from rq import Queue

from broker import store
from broker.cleanup import cleanup_ended
from broker.keys import new_submission_id
from broker.plan import SubmissionPlan
from core.episode_spec import EpisodeSpec

JOB_FUNCTION = "env_worker.job.run_episode_job"
"""The RQ job every episode is: named by its import path (the one string-named import of the
project: the env workers above this layer import it, we only name it)."""
RESULT_TTL_S = 0  # results live in the submission's hash, not in RQ's job results
FAILURE_TTL_S = 7 * 24 * 3600


def episode_specs(sid: str, plan: SubmissionPlan) -> list[EpisodeSpec]:
    """One spec per planned episode, in order; the plan's template carries the challenge's settings."""
    return [
        replace(plan.template, env_path=e.env_path, env_file=e.env_file, test=e.test, level=e.level, seed=e.seed,
                test_id=e.test_id, scenario_id=e.scenario_id, episode_id=f"{sid}/{index}", submission_id=sid, index=index)
        for index, e in enumerate(plan.episodes)
    ]


def tests_in_order(specs: Sequence[EpisodeSpec]) -> list[list]:
    """[[test, [episode indices]], ...] in test order: the units the completion gate releases."""
    order: dict[int | None, list[int]] = {}
    for spec in specs:
        order.setdefault(spec.test, []).append(spec.index)
    return [[test, indices] for test, indices in order.items()]


PER_EPISODE_FIELDS = ("env_path", "env_file", "test", "level", "test_id", "scenario_id", "episode_id", "submission_id",
                      "index")


def create(conn: redis.Redis, plan: SubmissionPlan, name: str | None = None, sid: str | None = None,
           agent_command: str | None = None, workers: int | None = None) -> str:
    cleanup_ended(conn)
    sid = sid or new_submission_id()
    settings = {k: v for k, v in plan.template.as_dict().items() if k not in PER_EPISODE_FIELDS}
    store.create_submission(conn, store.Submission(
        id=sid, name=name or sid, n_episodes=len(plan.episodes), planned_episodes=len(plan.episodes),
        test_set=plan.test_set, challenge=plan.challenge,
        phase=plan.phase, settings=settings, aggregation=plan.aggregation, overall_s=plan.overall_s,
        max_consecutive_timeouts=plan.max_consecutive_timeouts, completion_gate=plan.completion_gate,
        agent_command=agent_command, workers=workers))
    return sid


def episode_job(spec: EpisodeSpec, job_timeout_s: float) -> dict:
    """The RQ job that plays one episode (`Queue.prepare_data`, for `enqueue_many`)."""
    return Queue.prepare_data(JOB_FUNCTION, args=(spec.as_dict(),), job_id=store.episode_job_id(spec.submission_id, spec.index),
                              timeout=int(job_timeout_s) + 60, result_ttl=RESULT_TTL_S, failure_ttl=FAILURE_TTL_S,
                              description=f"{spec.submission_id} {spec.env_file}")


def enqueue(conn: redis.Redis, sid: str, plan: SubmissionPlan, specs: Sequence[EpisodeSpec]) -> Queue:
    """Start the submission's clock and put its (first) episodes on its queue, then mark it queued."""
    queue = store.submission_queue(conn, sid)
    now = time.time()
    fields: dict = {"enqueued_at": now, "deadline_at": now + plan.overall_s}
    # every spec is kept: the gate releases tests from them, the reaper re-runs lost episodes from them
    conn.hset(store.specs_key(sid), mapping={str(s.index): json.dumps(s.as_dict()) for s in specs})
    if plan.completion_gate is None:
        first = [specs[i] for i in play_order([s.env_path for s in specs])]
    else:
        tests = tests_in_order(specs)
        fields.update(tests=tests, released=1)
        first = [s for s in specs if s.index in set(tests[0][1])]
    store.update_submission(conn, sid, **fields)
    queue.enqueue_many([episode_job(s, plan.overall_s) for s in first])
    store.transition(conn, sid, store.QUEUED, (store.SUBMITTED,))
    return queue


def release(conn: redis.Redis, sid: str, indices: Sequence[int], job_timeout_s: float) -> None:
    """Enqueue more of a submission's episodes (the gate's next test)."""
    raw = conn.hmget(store.specs_key(sid), [str(i) for i in indices])
    specs = [EpisodeSpec.from_dict(json.loads(r)) for r in raw if r]
    store.submission_queue(conn, sid).enqueue_many([episode_job(s, job_timeout_s) for s in specs])


def drop_queue(conn: redis.Redis, sid: str) -> int:
    """Remove the submission's queued (not yet started) episode jobs; return how many."""
    return store.submission_queue(conn, sid).empty()


def play_order(env_paths: Sequence[str]) -> list[int]:
    """The order a submission's episodes are enqueued in without a gate, as indexes into
    `env_paths`: biggest env files first (a stable sort: the plan's order among equals), so that
    the longest episodes do not end up alone at the tail of the run."""
    return sorted(range(len(env_paths)), key=lambda i: -_size(env_paths[i]))


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
