"""What `flateval run`, `submit` and `episode` evaluate: broker's plan, checked before anything starts.

The broker plans from the challenge and the options (`broker.plan`); only the env workers know
whether a gymnasium env id can be made at all, so the check that it can is made here, on top of
both, and an unknown id is one line before any process starts rather than an env error per episode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker.plan import PlanError, SubmissionPlan, plan_submission
from env_worker.env_adapter import EnvLoadError
from env_worker.gymnasium_env import GymnasiumEnv

BUNDLED_TEST_SET = Path(__file__).resolve().parent / "data" / "test_sets" / "small"
"""The small test set `flateval run` plays when neither --test-set nor the challenge names one."""


def plan_run(**options: Any) -> SubmissionPlan:
    """`broker.plan.plan_submission(**options)`, then a check that its gymnasium env, if any, can be
    made. Raises what `plan_submission` raises, one line."""
    plan = plan_submission(**options)
    if plan.env_id is not None:
        try:
            GymnasiumEnv(plan.env_id, plan.template.seed).release()
        except EnvLoadError as exc:
            raise PlanError(str(exc)) from None
    return plan
