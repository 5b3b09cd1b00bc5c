"""Every Redis key flateval writes, and the names RQ builds its keys from: named here and nowhere else.

Nothing here talks to Redis (`broker.store` does): the processes that only need a name (a
submission's queue, before Redis even runs) import this alone.

Keys (documented in docs/architecture.md):

- ``flateval:submissions``                  sorted set of submission ids by creation time
- ``flateval:submission:<id>``              hash: the submission record (`Submission`)
- ``flateval:submission:<id>:results``      hash: episode index -> result record (JSON); a re-run
                                            replaces the field, so a result is never counted twice
- ``flateval:submission:<id>:agent_logs``   hash: pair name -> last 10,000 chars of its agent's output
- ``flateval:submission:<id>:specs``        hash: episode index -> episode spec (JSON): the gate
                                            releases tests from it, the reaper re-runs lost episodes
- ``flateval:submission:<id>:attempts``     hash: episode index -> the latest attempt given out to
                                            play it; only that attempt may store its result (fencing);
                                            and <index>:<claim> -> the attempt that claim was given
- ``flateval:lease:<job id>``               string: the worker and attempt playing that episode job,
                                            renewed while it plays (see `broker.reaper`)
- ``flateval:reaped:<job id>:<run>``        string: one reaper requeued that run of the job
- ``flateval:reaping:<id>``                 string: a worker is reaping the submission (1 s): the others skip it
- ``flateval:agent_slot:<i>``               string: the worker paired with compose's agent i
- ``flateval:dataset``                      string: this Redis holds flateval's data (set with the
                                            first submission): without it, a Redis restarted empty
- ``rq:queue:flateval-<id>``                RQ's list of the submission's queued episode jobs
"""

from __future__ import annotations

import time
import uuid


def new_submission_id() -> str:
    """When it was made, then 6 random hex digits: ids sort by time and do not collide."""
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


SUBMISSIONS = "flateval:submissions"
DATASET = "flateval:dataset"
"""Set with the first submission a Redis sees: a Redis without it never held flateval's data, or
lost it (restarted without its append-only file). A missing record is then lost state, not a typo."""


def submission_key(sid: str) -> str:
    return f"flateval:submission:{sid}"


def results_key(sid: str) -> str:
    return f"flateval:submission:{sid}:results"


def agent_logs_key(sid: str) -> str:
    return f"flateval:submission:{sid}:agent_logs"


def specs_key(sid: str) -> str:
    return f"flateval:submission:{sid}:specs"


def attempts_key(sid: str) -> str:
    return f"flateval:submission:{sid}:attempts"


# Keys of one episode job, and of one compose agent: format them with the job id, the slot number.
lease_key = "flateval:lease:{}".format  # the worker playing the job, renewed while it plays
reaped_key = "flateval:reaped:{}".format  # one run of a job: set NX by the one reaper that requeues it
reaping_key = "flateval:reaping:{}".format  # a submission id: set NX for a second by the one worker reaping it
agent_slot_key = "flateval:agent_slot:{}".format  # the worker paired with compose's agent number <slot>


# RQ's names for a submission's queue and jobs: RQ builds its own keys from these.
def queue_name(sid: str) -> str:
    return f"flateval-{sid}"


def submission_of_queue(queue: str) -> str:
    """The submission id a queue name (`queue_name`) stands for."""
    return queue.removeprefix("flateval-")


def episode_job_id(sid: str, index: int) -> str:
    return f"{queue_name(sid)}-{index}"


def queue_list_key(sid: str) -> str:
    """The Redis list RQ keeps the submission's queued jobs in (what KEDA watches)."""
    return f"rq:queue:{queue_name(sid)}"
