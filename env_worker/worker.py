"""`flateval worker`: an RQ worker paired with one agent.

It runs episode jobs in its own process (`PairedWorker`, RQ's SimpleWorker: no fork per job, so the
agent link and the agent process it supervises live as long as the worker, and scheduling an episode
costs a few Redis round trips), handing each job its context (`env_worker.context`). A stock
`rq worker -S json` with ``$FLATEVAL_AGENT_ENDPOINT`` runs the same jobs.
"""

from __future__ import annotations

import gc
import logging
from importlib import import_module
import os
import socket
import sys
import time
from typing import Callable

from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.serializers import JSONSerializer

from broker import reaper, store
from broker.connection import RedisUnreachable, connect
from broker.submit import JOB_FUNCTION
from core.thread_signals import stop_signals_blocked
from env_worker.agent_process import AgentStartError, wait_for_handshake
from env_worker.agent_start import StartedAgent
from env_worker.agent_slots import NoFreeSlot, claim_slot
from env_worker.context import WorkerContext, job_context
from env_worker.flatland_env import warm_up
from env_worker.pairing import PairedAgent
from env_worker.worker_log import EpisodeLog, start_line, worker_logger


IDLE_POLL_S = 0.5
"""With no open submission at all: how often an idle worker looks for one."""

IDLE_RETURN_S = 1
"""How long a worker blocks on its queues for the next job before it returns to look for new
submissions and re-run dead workers' episodes (RQ's ``max_idle_time``: whole seconds). A job that
arrives meanwhile wakes it at once (a blocking pop), so this costs no latency."""


class WorkerStartError(RuntimeError):
    pass


class PairedWorker(SimpleWorker):
    """RQ's in-process worker, owning the context (paired agent, observers) it hands every job."""

    def __init__(self, *args: Any, context: WorkerContext, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context = context
        self.stop_signalled = False

    def request_stop(self, signum: Any, frame: Any) -> None:
        """RQ's warm-shutdown handler (SIGTERM, SIGINT). Noted here because RQ tells no one: while
        idle it ends `work` with a StopRequested that it swallows itself."""
        self.stop_signalled = True
        super().request_stop(signum, frame)

    def subscribe(self) -> None:
        """RQ's command listener runs in a thread of its own, which must leave the stop signals to the
        main thread (`core.thread_signals`): taken there, a stop waited out the idle pop (1 s)."""
        with stop_signals_blocked():
            super().subscribe()

    def unsubscribe(self) -> None:
        """RQ's, with the listener told to stop before the channel is left. In RQ's order the
        listener could read the unsubscription, loop, and wait in redis-py for a subscription that
        never comes, and RQ's join gave up on it after a second: a second of a worker's stop, one
        in three, and of every idle return to look for new submissions."""
        if self.pubsub_thread:
            self.pubsub_thread.stop()
            self.pubsub.unsubscribe()
            self.pubsub_thread.join(timeout=1)
            self.pubsub.close()

    def perform_job(self, *args: Any, **kwargs: Any) -> bool:
        with job_context(self.context):
            return super().perform_job(*args, **kwargs)


def _work(conn: redis.Redis, queues: list[str], context: WorkerContext, burst: bool) -> bool:
    """Run the paired worker on `queues`; True if it was asked to stop (SIGTERM/SIGINT)."""
    worker = PairedWorker([Queue(q, connection=conn, serializer=JSONSerializer) for q in queues],
                          connection=conn, serializer=JSONSerializer, name=context.agent.name, context=context)
    worker.work(burst=burst, max_idle_time=None if burst else IDLE_RETURN_S, logging_level=logging.WARNING,
                with_scheduler=False)
    return worker.stop_signalled


def open_submission_queues(conn: redis.Redis) -> list[str]:
    """Queues of the submissions still to evaluate, oldest submission first."""
    return [store.queue_name(sid) for sid in store.open_submissions(conn)]


def _work_loop(conn: redis.Redis, queues: Callable[[], list[str]], context: WorkerContext, burst: bool) -> None:
    """Work the queues until idle, and between two spells re-run the episodes of dead workers.

    Without --queue, `queues` follows every open submission as submissions come and go (a
    long-lived cluster worker); with it, the loop still wakes up to reap while idle. Waiting for
    jobs is a blocking pop, never a sleep: an episode enqueued while the worker waits starts at once.
    """
    try:
        while True:
            names = queues()
            reaper.reap_open_submissions(conn, [store.submission_of_queue(q) for q in names])
            if names and _work(conn, names, context, burst):
                return
            if burst:
                return
            if not names:
                time.sleep(IDLE_POLL_S)  # no open submission anywhere: look again
    except StopRequested:  # RQ's signal handler, still installed between two bursts
        return


def run_worker(
    redis_url: str,
    queues: list[str],
    agent_endpoint: str | None = None,
    agent: StartedAgent | None = None,
    name: str | None = None,
    burst: bool = False,
    startup_timeout_s: float = 60.0,
    agent_slots: int | None = None,
    curve_server_key: str | None = None,
    record_dir: str | None = None,
    metrics_url: str | None = None,
    redis_wait_s: float = 0.0,
) -> None:
    """Pair with an agent and work the queues until stopped, saying so on stderr (a start line, one
    line per episode; `metrics_url` is only named there). Stops `agent` when it ends, however.

    `agent` is the agent this worker owns, already launched (`env_worker.agent_start`: before the
    worker's own imports, so that the two start-ups overlap); it is restarted after faults. Without
    one the worker pairs with the agent at `agent_endpoint`: a template with ``{slot}`` in it makes
    the worker claim a free slot in Redis (see `env_worker.agent_slots`). `redis_wait_s`: how long
    Redis may take to answer (`flateval run` starts its own beside its workers).
    """
    try:
        conn = connect(redis_url, wait_s=redis_wait_s)
    except RedisUnreachable as exc:
        if agent:
            agent.discard()
        raise WorkerStartError(str(exc)) from None
    lease = None
    if agent is None and agent_endpoint and "{slot}" in agent_endpoint:
        if not agent_slots:
            raise WorkerStartError("an --agent-endpoint with {slot} needs --agent-slots N")
        try:
            lease = claim_slot(conn, agent_slots, name or f"{socket.gethostname()}:{os.getpid()}")
        except NoFreeSlot as exc:
            raise WorkerStartError(str(exc)) from None
        agent_endpoint = agent_endpoint.format(slot=lease.slot)
    process = agent.process if agent else None
    endpoint = process.endpoint if process else agent_endpoint
    if not endpoint:
        raise WorkerStartError("give --agent-endpoint (an agent already running) or --agent-command")
    context = WorkerContext.for_agent(PairedAgent(endpoint, process, name=name, startup_timeout_s=startup_timeout_s,
                                                  curve_server_key=curve_server_key), record_dir=record_dir)
    log = worker_logger()
    context.observers.append(EpisodeLog(context.agent.name, log))
    log.info(start_line(context.agent.name, list(queues), endpoint, process.command if process else None,
                        metrics_url))
    try:
        try:
            warm_up()
            import_module(JOB_FUNCTION.rpartition(".")[0])  # the job's imports, before the first episode
            gc.collect()
            gc.freeze()  # what start-up made lives as long as the worker: full collections need not scan it
            if process:
                process.wait_ready(startup_timeout_s)
                process.mark_ready()
                print(process.sandbox_line(), file=sys.stderr, flush=True)
            else:  # someone else's agent (a sidecar): take no episode before it answers
                wait_for_handshake(endpoint, startup_timeout_s, curve_server_key)
        except AgentStartError as exc:
            raise WorkerStartError(str(exc)) from None
        log.info(f"{context.agent.name}: the agent answered its handshake; waiting for episodes")
        fixed = list(queues)
        _work_loop(conn, (lambda: fixed) if fixed else (lambda: open_submission_queues(conn)), context, burst)
    finally:
        context.close()
        if lease:
            lease.release()
        if agent:
            agent.remove_scratch()
