"""The RQ job that runs one episode: `run_episode_job(spec)`, enqueued with RQ's JSON serializer.

It runs under `flateval worker` and under a stock ``rq worker -S json`` alike: the worker's context
(`env_worker.context`) is handed to `play_episode`. The result is stored in Redis idempotently under
(submission, episode index); then the stop rules run (the job that stores the last result finalizes
the score from what is stored).
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from rq import get_current_job

from broker import reaper, stop_rules, store
from core.episode_spec import EpisodeSpec
from core.outcomes import STOPPED
from core.settings import TEST_SET_DIR_ENV
from core.thread_signals import block_stop_signals
from env_worker.context import WorkerContext, current_context
from env_worker.episode import run_episode
from env_worker.worker_log import worker_logger


WATCH_INTERVAL_S = 0.25
"""How often a running episode learns that its submission ended (cancelled, failed): one Redis
read per interval from a side thread, none per step."""


class SubmissionWatch:
    """A side thread for one running episode: it renews the episode's lease (so reapers know this
    worker is alive), reaps the submission's orphans when it is its turn (a dead worker's episode
    is requeued while the others are busy, not once the queue has drained), and tells the loop,
    at the cost of an attribute read per step, to stop when the submission ended or when the
    episode was given to another worker (this one was cut off from Redis past its lease: its
    result would be refused)."""

    def __init__(self, conn: redis.Redis, sid: str, deadline_at: float | None, job_id: str, owner: str,
                 index: int, attempt: int) -> None:
        self.conn, self.sid, self.deadline_at = conn, sid, deadline_at
        self.job_id, self.owner, self.index, self.attempt = job_id, owner, index, attempt
        self.reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"watch-{sid}", daemon=True)

    def __enter__(self) -> "SubmissionWatch":
        self._renew()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()
        if exc[0] is None:  # else the lease runs out, and a reaper requeues the episode
            reaper.drop_lease(self.conn, self.job_id, self.owner, self.attempt)

    def _renew(self) -> None:
        if not reaper.take_lease(self.conn, self.sid, self.index, self.job_id, self.owner, self.attempt):
            self.reason = self.reason or LEASE_LOST

    def _reap(self) -> None:
        """Requeue other workers' orphans: a service to the others, which must never cost this
        episode its lease thread (a job RQ cannot read is the reaper's problem, not ours)."""
        try:
            reaper.reap_open_submissions(self.conn, [self.sid])
        except redis.RedisError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged, and this thread goes on renewing
            worker_logger().warning(f"reaping {self.sid} failed: {type(exc).__name__}: {exc}")

    def _watch(self) -> None:
        block_stop_signals()  # the worker's main thread takes them (core/thread_signals.py)
        renewed, reaped = time.monotonic(), -math.inf
        while not self._done.wait(WATCH_INTERVAL_S):
            try:
                if time.monotonic() - renewed >= reaper.RENEW_S:
                    self._renew()
                    renewed = time.monotonic()
                if time.monotonic() - reaped >= reaper.REAP_EVERY_S:  # busy workers reap too, in turns
                    reaped = time.monotonic()
                    self._reap()
                status = store.get_status(self.conn, self.sid)
            except redis.RedisError:
                continue  # Redis away for a moment: keep playing, look again
            if self.reason is None and status is None:
                self.reason = "submission gone: Redis lost its state"
            elif self.reason is None and status in store.TERMINAL:
                self.reason = f"submission {status}"

    def __call__(self) -> str | None:
        if self.reason is None and self.deadline_at is not None and time.time() > self.deadline_at:
            self.reason = "overall time limit reached"
        return self.reason


LEASE_LOST = "the episode was given to another worker (this one lost its lease: cut off from Redis?)"


def run_episode_job(spec: dict[str, Any]) -> dict[str, Any]:
    """RQ's entry point (`broker.submit.JOB_FUNCTION`): play the episode with the context of the worker
    running this job, or, under a stock rq worker, with one built from the environment."""
    context = current_context()
    if context is not None:
        return play_episode(context, spec)
    context = WorkerContext.from_environment()
    try:
        return play_episode(context, spec)
    finally:
        context.close()


def play_episode(context: WorkerContext, spec: dict[str, Any]) -> dict[str, Any]:
    episode = EpisodeSpec.from_dict(spec)
    job = get_current_job()
    conn = job.connection
    sid = episode.submission_id
    record = store.get_submission(conn, sid)
    if record is None or record.status in store.TERMINAL:
        return {"skipped": record.status if record else "unknown submission"}
    if stop_rules.check_deadline(conn, sid, record.deadline_at):
        return {"skipped": "overall time limit reached"}
    store.transition(conn, sid, store.RUNNING, (store.QUEUED, store.SUBMITTED))

    root = os.environ.get(TEST_SET_DIR_ENV)
    if root and episode.env_path:  # a gymnasium episode has no env file
        episode = EpisodeSpec.from_dict({**episode.as_dict(), "env_path": str(Path(root) / episode.env_file)})
    pair = context.agent
    attempt = store.claim_attempt(conn, sid, episode.index, uuid.uuid4().hex)
    # The lease lasts until the agent is ready for the next episode: a slow restart is no dead worker.
    with SubmissionWatch(conn, sid, record.deadline_at, job.id, pair.name, episode.index, attempt) as watch:
        result = run_episode(episode, pair.link, context.observers, stop=watch)
        if result.outcome == STOPPED:
            stop_rules.check_deadline(conn, sid, record.deadline_at)
        else:
            row = {**result.as_dict(), "index": episode.index, "episode_id": episode.episode_id, "worker": pair.name}
            state, streak = store.record_result(conn, sid, episode.index, row, attempt)
            if state == store.RECORD_FENCED:
                worker_logger().info(f"{pair.name}: {sid} {episode.env_file}: result dropped: {LEASE_LOST}")
                watch.reason = LEASE_LOST
            stop_rules.after_result(conn, sid, episode.test, state, streak)
        tail = pair.output_tail()
        if tail is not None:
            store.save_agent_log(conn, sid, pair.name, tail)
        pair.after_episode(result, episode.notice_timeout_s)
    if watch.reason == LEASE_LOST:
        keep_requeued_job(job)
    return {"outcome": result.outcome, "normalized_return": result.normalized_return}


def keep_requeued_job(job: Any) -> None:
    """This run lost its episode to a later attempt: the reaper put the same job back on the queue,
    and RQ, told to keep no result (``result_ttl=0``), would now delete the job's hash, so that the
    queued run would be skipped when dequeued and the episode never played. Keep the hash as long
    as the job may run."""
    job.result_ttl = job.timeout or reaper.KEEP_FENCED_JOB_S
