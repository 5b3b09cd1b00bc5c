"""`flateval fab-worker`: a Celery worker on a flatland-benchmarks (FAB) benchmark queue.

FAB's backend sends one Celery task per submission (``celery-node``'s ``sendTask``): its name and its
queue are the benchmark's id, its id is the submission's id, its kwargs ``submission_data_url`` (the
submission image) and ``tests`` (test ids). FAB's orchestrator consumes it with a Celery app whose
broker, result backend, queue and TLS files come from ``BROKER_URL``, ``BACKEND_URL``,
``BENCHMARK_ID``, ``RABBITMQ_KEYFILE``/``RABBITMQ_CERTFILE``/``RABBITMQ_CA_CERTS`` (queue_consumer.py);
this worker reads the same, as options or those variables, and hands each task to
`flateval.fab_orchestrator.FabOrchestrator`. One task at a time per worker (its pairs are the
parallelism); another fab-worker on the same queue takes the next submission.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any

from flateval.fab_orchestrator import FabOrchestrator, FabTask, TaskFailure

log = logging.getLogger("flateval.fab")


@dataclass(frozen=True)
class BrokerSettings:
    broker_url: str
    benchmark_id: str  # the task's name and the queue
    backend_url: str | None = None
    keyfile: str | None = None
    certfile: str | None = None
    ca_certs: str | None = None

    @property
    def tls(self) -> dict[str, Any] | None:
        """Celery's ``broker_use_ssl``, as FAB's consumer sets it (certificate required), when the URL
        is ``amqps://`` or a TLS file is given; None: plain AMQP."""
        if not (self.broker_url.startswith("amqps://") or self.keyfile or self.certfile or self.ca_certs):
            return None
        return {"keyfile": self.keyfile, "certfile": self.certfile, "ca_certs": self.ca_certs,
                "cert_reqs": ssl.CERT_REQUIRED}


def celery_app(broker: BrokerSettings, orchestrator: FabOrchestrator):
    """The Celery app with FAB's task registered under the benchmark's id."""
    from celery import Celery

    app = Celery("flateval-fab", broker=broker.broker_url, backend=broker.backend_url or None)
    app.conf.update(
        broker_use_ssl=broker.tls, task_default_queue=broker.benchmark_id, worker_prefetch_multiplier=1,
        accept_content=["json"], task_serializer="json", result_serializer="json",
        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
    )

    @app.task(name=broker.benchmark_id, bind=True, throws=(TaskFailure,))  # an expected failure: no traceback
    def evaluate(self, submission_data_url: str, tests: list[str] | None = None, **kwargs: Any):
        url = submission_data_url.strip() if isinstance(submission_data_url, str) else submission_data_url
        task = FabTask(submission_id=self.request.id, submission_data_url=url, tests=tests)  # checked by `run`
        log.info("flateval: FAB submission %s: %s on tests %s", task.submission_id, task.submission_data_url, tests)
        try:
            results, cause = orchestrator.run(task)
        except TaskFailure as exc:
            log.warning("flateval: FAB submission %s failed: %s", task.submission_id, exc.message)
            raise
        log.info("flateval: FAB submission %s done%s", task.submission_id, f": {cause}" if cause else "")
        return results, cause

    return app


def warm_up() -> None:
    """Import what every task needs now, not in the first submission's time."""
    import flatland.evaluators.trajectory_evaluator  # noqa: F401
    import requests_oauthlib  # noqa: F401

    import flateval.local_evaluation  # noqa: F401
    import flateval.local_run  # noqa: F401
    from flateval.fab_api import clientlib

    clientlib()


def run_worker(broker: BrokerSettings, orchestrator: FabOrchestrator, hostname: str | None = None,
               loglevel: str = "INFO") -> None:
    """Consume the benchmark queue until stopped (SIGTERM: Celery's warm shutdown, the task finishes)."""
    app = celery_app(broker, orchestrator)
    warm_up()
    argv = ["worker", "--queues", broker.benchmark_id, "--pool", "solo", "--concurrency", "1",
            "--loglevel", loglevel, "--without-gossip", "--without-mingle", "--without-heartbeat"]
    # a name of its own: two workers of one name on one broker fight over Celery's control queue
    argv += ["--hostname", hostname or f"flateval-fab-{os.getpid()}@%h"]
    app.worker_main(argv=argv)
