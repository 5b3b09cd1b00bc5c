"""One score: the progress bar, the exporter and the final score agree under every aggregation, and
the submission record has one serialization pair."""

from __future__ import annotations

import pytest

from broker import stop_rules, store, submit
from broker.exporter import RedisCollector
from broker.plan import PlannedEpisode, make_plan
from core.challenge import Phase, Scoring, StopRules
from core.settings import AGGREGATIONS
from flateval.progress import progress_summary
from scoring.aggregate import primary_score

# Two tests of unequal size, so that the mean, the sum and the mean of test means all differ.
RESULTS = [
    {"index": 0, "test": 0, "level": 0, "outcome": "completed", "normalized_return": -0.2, "percentage_complete": 1.0},
    {"index": 1, "test": 0, "level": 1, "outcome": "timeout", "normalized_return": -1.0, "percentage_complete": 0.0},
    {"index": 2, "test": 0, "level": 2, "outcome": "completed", "normalized_return": -0.3, "percentage_complete": 0.5},
    {"index": 3, "test": 1, "level": 0, "outcome": "completed", "normalized_return": -0.6, "percentage_complete": 0.5},
]


def exported_score(conn, sid: str) -> float:
    for family in RedisCollector(conn).collect():
        if family.name == "flateval_submission_mean_normalized_return":
            return next(s.value for s in family.samples if s.labels["submission"] == sid)
    raise AssertionError("no score series")


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_progress_exporter_and_final_score_are_one_score(aggregation, redis_conn):
    episodes = [PlannedEpisode(env_file=f"Test_{r['test']}/Level_{r['level']}.pkl", seed=1001, env_path="x",
                               test=r["test"], level=r["level"]) for r in RESULTS]
    phase = Phase(name="p", scoring=Scoring(aggregation=aggregation), stop_rules=StopRules(None, None))
    plan = make_plan(episodes, phase)
    sid = submit.create(redis_conn, plan)
    store.transition(redis_conn, sid, store.RUNNING, (store.SUBMITTED,))
    for row in RESULTS[:3]:
        stop_rules.after_result(redis_conn, sid, row["test"], *store.record_result(redis_conn, sid, row["index"], row))

    so_far = primary_score(RESULTS[:3], aggregation)
    record = store.get_submission(redis_conn, sid)
    assert progress_summary(store.get_results(redis_conn, sid), record).startswith(f"mean NR {so_far:+.4f}")
    assert exported_score(redis_conn, sid) == pytest.approx(so_far)

    row = RESULTS[3]
    stop_rules.after_result(redis_conn, sid, row["test"], *store.record_result(redis_conn, sid, row["index"], row))
    record = store.get_submission(redis_conn, sid)
    final = record.score["mean_normalized_return"]
    assert record.status == store.FINISHED
    assert final == pytest.approx(primary_score(RESULTS, aggregation))
    assert progress_summary(store.get_results(redis_conn, sid), record).startswith(f"mean NR {final:+.4f}")
    assert exported_score(redis_conn, sid) == pytest.approx(final)
    expected = {"mean": -0.525, "sum": -2.1, "mean_of_test_means": (-0.5 + -0.6) / 2, "fab": -2.1}[aggregation]
    assert final == pytest.approx(expected)


def test_the_submission_record_round_trips_through_its_hash(redis_conn):
    record = store.Submission(
        id="r1", name="team a", n_episodes=3, settings={"step_timeout_s": 5.0, "observation_builders": ["tree"]},
        aggregation="sum", overall_s=2880.0, max_consecutive_timeouts=10, completion_gate=None,
        tests=[[0, [0, 1]], [1, [2]]], released=1, score={"mean_normalized_return": -0.25})
    store.create_submission(redis_conn, record)
    store.update_submission(redis_conn, "r1", stopped_by="gate", n_episodes=2)
    redis_conn.hset(store.submission_key("r1"), store.gate_checked_field(0), 1)  # a field the record skips
    back = store.get_submission(redis_conn, "r1")
    assert back == store.Submission(**{**record.__dict__, "stopped_by": "gate", "n_episodes": 2})
    assert back.completion_gate is None and back.submitted_at > 0 and back.queue == "flateval-r1"
    assert store.Submission.from_hash({k.encode(): v.encode() for k, v in back.to_hash().items()}) == back
