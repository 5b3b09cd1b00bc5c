"""`flateval worker`: an RQ worker paired with one agent.

It runs episode jobs in its own process (RQ's SimpleWorker: no fork per job, so the agent link and
the agent process it supervises live as long as the worker, and scheduling an episode costs a few
Redis round trips). A stock `rq worker -S json` with ``$FLATEVAL_AGENT_ENDPOINT`` runs the same jobs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from env_worker.agent_process import AgentProcess, AgentStartError
from env_worker.flatland_env import warm_up
from env_worker.pairing import PairedAgent, set_paired_agent


class WorkerStartError(RuntimeError):
    pass


def run_worker(
    redis_url: str,
    queues: list[str],
    agent_endpoint: str | None = None,
    agent_command: str | None = None,
    agent_log: str | None = None,
    name: str | None = None,
    burst: bool = False,
    startup_timeout_s: float = 60.0,
    pidfile: str | None = None,
) -> None:
    """Pair with an agent (start it when `agent_command` is given) and work the queues until stopped."""
    process = None
    if agent_command:
        process = AgentProcess(agent_command, agent_log or f"agent-{os.getpid()}.log", bind=agent_endpoint,
                               connect=agent_endpoint)
    endpoint = process.endpoint if process else agent_endpoint
    if not endpoint:
        raise WorkerStartError("give --agent-endpoint (an agent already running) or --agent-command")
    pair = PairedAgent(endpoint, process, name=name, startup_timeout_s=startup_timeout_s)
    warm_up()
    try:
        if process:
            try:
                process.start(startup_timeout_s)
            except AgentStartError as exc:
                raise WorkerStartError(str(exc)) from None
            if pidfile:
                Path(pidfile).write_text(str(process.pid))
        set_paired_agent(pair)
        conn = redis.Redis.from_url(redis_url, health_check_interval=30)
        try:
            conn.ping()
        except redis.RedisError as exc:
            raise WorkerStartError(f"cannot reach Redis: {exc}") from None
        worker = SimpleWorker([Queue(q, connection=conn, serializer=JSONSerializer) for q in queues],
                              connection=conn, serializer=JSONSerializer, name=pair.name)
        worker.work(burst=burst, logging_level=logging.WARNING, with_scheduler=False)
    finally:
        set_paired_agent(None)
        pair.close()
