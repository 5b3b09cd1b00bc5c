"""Metrics derived from Redis (queues, workers, submissions), read at scrape time.

`flateval exporter` serves these; `flateval run --metrics-port` serves them together with every
local worker's episode metrics (prometheus_client's multiprocess files). Reading at scrape time
means no process has to keep counters in sync with Redis, and nothing is written per step.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Iterable

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from rq import Queue, Worker
from rq.registry import FailedJobRegistry, StartedJobRegistry

from broker import store
from core.settings import DEFAULT_METRICS_HOST
from scoring.aggregate import primary_score

RECENT_S = 3600.0
"""Finished submissions keep their per-submission score series for this long."""


class RedisCollector:
    """A prometheus collector over flateval's Redis keys and RQ's."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            yield from self._collect()
        except redis.RedisError:
            return  # Redis away: this scrape shows no Redis-derived series, the next one will

    def _collect(self) -> Iterable[GaugeMetricFamily]:
        conn = self.conn
        queues = [q for q in Queue.all(connection=conn) if q.name.startswith("flateval-")]
        jobs = GaugeMetricFamily("flateval_queue_jobs", "Episode jobs in flateval queues, by state.", labels=["state"])
        jobs.add_metric(["queued"], sum(q.count for q in queues))
        # cleanup=False: a scrape only reads, it never moves RQ's jobs around
        jobs.add_metric(["started"], sum(StartedJobRegistry(queue=q).get_job_count(cleanup=False) for q in queues))
        jobs.add_metric(["failed"], sum(FailedJobRegistry(queue=q).get_job_count(cleanup=False) for q in queues))
        yield jobs

        workers = GaugeMetricFamily("flateval_workers", "RQ workers, by state.", labels=["state"])
        states = Counter(w.get_state() for w in Worker.all(connection=conn))
        workers.add_metric(["busy"], states.get("busy", 0))
        workers.add_metric(["idle"], sum(n for s, n in states.items() if s != "busy"))
        yield workers

        sids = [s.decode() for s in conn.zrange(store.SUBMISSIONS, 0, -1)]
        pipe = conn.pipeline()
        for sid in sids:
            pipe.hgetall(store.submission_key(sid))
        records = [store.Submission.from_hash(raw) for raw in pipe.execute() if raw]
        by_state = Counter()
        scores = GaugeMetricFamily("flateval_submission_mean_normalized_return",
                                   "Mean normalized return so far, per running or recently ended submission.",
                                   labels=["submission"])
        now = time.time()
        deadlines = []
        for record in records:
            by_state[record.status] += 1
            ended_at = record.ended_at
            recent = record.status == store.RUNNING or (ended_at is not None and now - ended_at < RECENT_S)
            if recent:
                deadlines.append(record.settings.get("step_timeout_s"))
            if record.status == store.RUNNING:
                value = primary_score(store.get_results(conn, record.id), record.aggregation)
            elif record.status == store.FINISHED and ended_at and now - ended_at < RECENT_S and record.score:
                value = record.score.get("mean_normalized_return")
            else:
                continue
            if value is not None:
                scores.add_metric([record.id], value)
        states_metric = GaugeMetricFamily("flateval_submissions", "Submissions, by state.", labels=["state"])
        for state in (store.SUBMITTED, store.QUEUED, store.RUNNING, store.FINISHED, store.FAILED, store.CANCELLED):
            states_metric.add_metric([state], by_state.get(state, 0))
        yield states_metric
        yield scores
        deadlines = [d for d in deadlines if d]
        if deadlines:
            yield GaugeMetricFamily("flateval_step_deadline_seconds",
                                    "Per-step deadline of the running and recently ended submissions (the largest).",
                                    value=max(deadlines))


def metrics_registry(conn: redis.Redis | None = None, multiprocess_dir: str | None = None) -> CollectorRegistry:
    """A registry of the Redis-derived metrics and/or the episode metrics written under a dir."""
    registry = CollectorRegistry()
    if conn is not None:
        registry.register(RedisCollector(conn))
    if multiprocess_dir:
        MultiProcessCollector(registry, path=multiprocess_dir)
    return registry


def serve_metrics(port: int, registry: CollectorRegistry, addr: str = DEFAULT_METRICS_HOST):
    """Serve /metrics in a background thread (on loopback unless `addr` says otherwise); returns
    (server, thread)."""
    return start_http_server(port, addr=addr, registry=registry)


