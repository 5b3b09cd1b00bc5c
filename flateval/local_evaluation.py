"""The submission of `flateval run` in Redis: create it, enqueue its episodes once every agent
answered (its clock starts there), follow it to its end, keeping its pairs alive; and end it early,
whatever stops it, with a results document all the same.
"""

from __future__ import annotations

import time
from typing import Callable

import redis

from broker import connection, reaper, stop_rules, store, submit
from broker.exporter import metrics_registry, serve_metrics
from broker.plan import SubmissionPlan
from broker.results import results_document
from core.settings import RunSettings
from env_worker.agent_process import agent_output_tail
from flateval.local_cluster import (POLL_S, LocalCluster, RunError, last_line, respawn_dead_pairs, sandbox_line,
                                    wait_pairs_ready)

REAP_EVERY_S = 1.0


def evaluate(cluster: LocalCluster, settings: RunSettings, plan: SubmissionPlan, sid: str, redis_url: str,
             on_progress: Callable[[list[dict], store.Submission], None] | None = None,
             on_notice: Callable[[str], None] | None = None) -> dict:
    """Evaluate the submission `sid` on `cluster`, whose pairs were started for its queue; return
    its results document (`flateval.local_run.run_local` says what the callbacks get). Raises
    `RunError`, with the document once the submission exists."""
    conn = connect(redis_url)
    if settings.metrics_port:
        try:
            server, _ = serve_metrics(settings.metrics_port, metrics_registry(conn, str(cluster.metrics_dir)),
                                      settings.metrics_host)
        except OSError as exc:
            raise RunError(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
                           f"{exc.strerror or exc}") from None
        cluster.metrics_server = server
    submit.create(conn, plan, sid=sid, agent_command=settings.agent, workers=settings.workers)
    try:
        _evaluate(conn, sid, cluster, settings, plan, redis_url, on_progress, on_notice)
    except redis.RedisError as exc:  # past the client's retries: Redis is gone for good
        lost = RunError(f"Redis at {connection.redact(redis_url)} stopped answering: {exc}")
        raise _ended_early(conn, sid, cluster, lost) from None
    except (RunError, KeyboardInterrupt) as exc:
        raise _ended_early(conn, sid, cluster, exc) from None
    cluster.stop_pairs()
    _keep_agent_logs(conn, sid, cluster)
    return results_document(conn, sid)


def _evaluate(conn: redis.Redis, sid: str, cluster: LocalCluster, settings: RunSettings, plan: SubmissionPlan,
              redis_url: str, on_progress: Callable[[list[dict], store.Submission], None] | None,
              on_notice: Callable[[str], None] | None) -> None:
    """Enqueue the episodes once every agent answered (timing starts there); follow the submission
    until it ends."""
    queue = store.queue_name(sid)
    wait_pairs_ready(cluster, settings.agent_startup_timeout_s + 30)
    line = sandbox_line(cluster.pairs[0].log)
    if on_notice:  # once the agents run: what each got, then how it is fenced in
        for notice in ([cluster.share.line()] if cluster.share else []) + ([line] if line else []):
            on_notice(notice)
    specs = submit.episode_specs(sid, plan)
    started = time.time()
    submit.enqueue(conn, sid, plan, specs)
    _follow(conn, sid, cluster, started + plan.overall_s, on_progress,
            respawn=lambda: respawn_dead_pairs(cluster, settings, redis_url, queue))


def _ended_early(conn: redis.Redis, sid: str, cluster: LocalCluster, cause: BaseException) -> RunError:
    """End the submission as `cause` says (an interrupt: cancelled; an agent that could not start:
    failed), stop the pairs, and give the error with the results document: the episodes that
    finished (kept, without a score) and the agents' output (a start-up traceback)."""
    interrupted = isinstance(cause, KeyboardInterrupt)
    try:
        store.finalize(conn, sid, store.CANCELLED if interrupted else store.FAILED,
                       "interrupted" if interrupted else str(cause))
        submit.drop_queue(conn, sid)
        cluster.stop_pairs()
        _keep_agent_logs(conn, sid, cluster)  # their last words too
        document = results_document(conn, sid)
    except redis.RedisError as exc:  # nothing left to read them from
        return RunError(f"{'interrupted' if interrupted else cause}; no results: Redis does not answer ({exc})")
    if not interrupted:
        return RunError(str(cause), document)
    if document["status"] == store.FINISHED:  # its last result came first
        return RunError("interrupted as the submission finished: its results are complete", document)
    finished = len(document["episodes"])
    return RunError(f"interrupted: the submission is {document['status']}, its {finished} finished "
                    f"episode{'' if finished == 1 else 's'} kept without a score; everything started was stopped",
                    document)


def _keep_agent_logs(conn: redis.Redis, sid: str, cluster: LocalCluster) -> None:
    """The agents' last words (what a script prints after its last episode) into the results: the
    workers kept each log's tail after every episode, this keeps it after the agent stopped."""
    for pair in cluster.pairs:
        tail = agent_output_tail(pair.agent_log)
        if tail:
            store.save_agent_log(conn, sid, pair.name, tail)


def _follow(conn: redis.Redis, sid: str, cluster: LocalCluster, deadline: float,
            on_progress: Callable[[list[dict], store.Submission], None] | None, respawn: Callable[[], None]) -> None:
    """Watch the submission until it ends; keep its pairs alive and re-run dead workers' episodes;
    fail it when its time runs out or its pairs cannot be kept alive."""
    seen = -1
    reaped_at = 0.0
    while True:  # two small reads a poll; the record and the results only when a result came
        status, count = store.get_status(conn, sid), store.count_results(conn, sid)
        if status is None:
            raise RunError(f"Redis lost the state of submission {sid} (it restarted without its data?): "
                           f"no score; evaluate it again")
        if on_progress and count != seen:
            seen = count
            on_progress(store.get_results(conn, sid), store.get_submission(conn, sid))
        if status in store.TERMINAL:
            return
        if stop_rules.check_deadline(conn, sid, deadline):
            return
        respawn()
        if all(p.process.poll() is not None for p in cluster.pairs):
            reason = last_line(cluster.pairs[0].log) or "every worker exited"
            stop_rules.fail(conn, sid, f"all workers stopped: {reason}")
            return
        if time.monotonic() - reaped_at > REAP_EVERY_S:
            reaper.requeue_orphans(conn, sid)
            reaper.requeue_lost(conn, sid)
            reaped_at = time.monotonic()
        time.sleep(POLL_S)  # progress polling of Redis, not a synchronization point


def connect(url: str) -> redis.Redis:
    try:
        return connection.connect(url)
    except connection.RedisUnreachable as exc:
        raise RunError(str(exc)) from None
