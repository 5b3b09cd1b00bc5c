"""What happens after each stored result: finalize, stop, or release the next test.

Runs in whichever worker stored the result, so the rules hold without any long-lived broker
process (`flateval submit` plus remote workers work the same as `flateval run`). Every decision
that must happen once is guarded in Redis (HSETNX), never by one process's memory.

- the last result of the submission finalizes its score;
- ``max_consecutive_timeouts`` timeouts in a row (in the order results arrive) fail it;
- with a completion gate, a test whose episodes are all in either releases the next test, or (its
  mean percentage complete under the gate) ends the submission with the episodes run so far;
- past the overall deadline the submission fails with no score.
"""

from __future__ import annotations

import json
import time
from statistics import fmean

import redis

from broker import store, submit


def after_result(conn: redis.Redis, sid: str, test: int | None, state: int, streak: int) -> None:
    if state in (store.RECORD_ENDED, store.RECORD_GONE, store.RECORD_FENCED):
        return
    if state == store.RECORD_COMPLETES:
        store.finalize(conn, sid)
        return
    record = store.get_submission(conn, sid)
    limit = record.max_consecutive_timeouts
    if limit and streak >= limit:
        fail(conn, sid, f"{streak} consecutive timeouts: the evaluation was stopped")
        return
    if record.completion_gate is not None and record.tests:
        _apply_gate(conn, sid, record, test)


def fail(conn: redis.Redis, sid: str, reason: str) -> None:
    """End the submission without a score and remove what is still queued."""
    store.finalize(conn, sid, store.FAILED, reason)
    submit.drop_queue(conn, sid)


def check_deadline(conn: redis.Redis, sid: str, deadline_at: float | None) -> bool:
    """Fail the submission if its overall time is up; True if it is (or already was) over."""
    if deadline_at is not None and time.time() > deadline_at:
        record = store.get_submission(conn, sid)
        limit = f" ({record.overall_s:g} s)" if record and record.overall_s else ""
        fail(conn, sid, f"overall time limit{limit} reached")
        return True
    return False


def _apply_gate(conn: redis.Redis, sid: str, record: store.Submission, test: int | None) -> None:
    tests, released = record.tests, record.released
    current_test, indices = tests[released - 1]
    if test != current_test or released >= len(tests):
        return  # the last test's end is the ordinary finalization
    raw = conn.hmget(store.results_key(sid), [str(i) for i in indices])
    if any(r is None for r in raw):
        return
    if not store.mark_gate_checked(conn, sid, current_test):
        return  # another worker stored a result of this test at the same moment and decides
    records = [json.loads(r) for r in raw]
    done = [r.get("percentage_complete") for r in records]
    completion = fmean(d for d in done if d is not None) if any(d is not None for d in done) else 0.0
    if completion < record.completion_gate:
        # not an error: the submission finished, on fewer episodes than planned (`planned_episodes`)
        mean = f"{completion:.2f}" if round(completion, 2) < record.completion_gate else f"{completion:.4f}"
        name = records[0].get("test_id") or f"Test_{current_test}"  # FAB's test id (level_2), else flatland's
        reason = f"completion gate after {name} (mean {mean} < {record.completion_gate:g})"
        store.update_submission(conn, sid, n_episodes=store.count_results(conn, sid), stopped_by=reason)
        if store.elect_finalizer(conn, sid):
            store.finalize(conn, sid, store.FINISHED)
        return
    conn.hincrby(store.submission_key(sid), "released", 1)
    submit.release(conn, sid, tests[released][1], record.overall_s or 3600.0)
