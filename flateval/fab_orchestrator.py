"""One FAB task, evaluated the flateval way: FAB's orchestrator contract, flateval's workers.

FAB's orchestrator (flatland-benchmarks, ``evaluation/flatland3_benchmarks/orchestrator/``) runs a
submission's scenarios one after another, each a container of the submission image running
``flatland-trajectory-generate-from-policy``, then re-checks each trajectory with flatland's
``TrajectoryEvaluator`` and posts the scores. Here the same task

1. posts STARTED; maps the task's tests to their scenarios (`core.fab_scenarios`), in FAB's order;
2. evaluates every scenario with `flateval run`'s local cluster: N worker+agent pairs in parallel, the
   challenge's live deadlines, the challenge's stop rules (a test's mean completion under the gate
   stops the evaluation after that test), every episode recorded from the authoritative env;
3. moves each recording (made under ``<data dir>/<flateval's submission id>/``: the whole data dir is
   the record dir, so agents in the local sandbox see none of it) into FAB's layout,
   ``<data dir>/<submission id>/<test id>/<scenario id>/`` (``event_logs/*.tsv``,
   ``serialised_state/<scenario id>.pkl``), and re-checks it with
   ``TrajectoryEvaluator`` exactly as FAB's orchestrator does (`scenario_scores`), posting a STARTED
   line per scenario as FAB does before it evaluates one;
4. posts every evaluated scenario's scores, then SUCCESS, or FAILURE with the cause: a scenario that
   failed (a missed deadline, an agent that crashed, a trajectory that does not replay), a stop rule,
   or the overall limit.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import fmean
from typing import Any

from core.fab_scenarios import FabScenario, FabScenarios, FabScenariosError
from flateval.fab_api import FAILURE, GENERAL_FAILURE, STARTED, SUCCESS, FabApi, FabApiError

log = logging.getLogger("flateval.fab")

POLICY_AGENT = "python -m agent_bridge.flatland_policy"
"""The agent a submission image runs: its flatland Policy, read from POLICY / OBS_BUILDER."""

DEFAULT_CHALLENGE = "ecml2026"  # FAB's benchmark of today


class TaskFailure(Exception):
    """The submission's evaluation failed; `message` is what FAB is told (FAB's TaskExecutionError)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FabTask:
    """A task as FAB's backend sends it: task id = submission id, kwargs ``submission_data_url`` and ``tests``."""

    submission_id: str
    submission_data_url: str
    tests: list[str] | None


IMAGE_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,511}$")
"""What a container image reference may look like (registry/name:tag@digest): never an option."""


def check_task(task: FabTask) -> None:
    """FAB's kwargs are checked before they name a folder or reach the container engine: `TaskFailure`."""
    if task.tests is not None and not (isinstance(task.tests, list) and all(isinstance(t, str) for t in task.tests)):
        raise TaskFailure(f"tests must be a list of test ids, got {str(task.tests)[:200]!r}")
    if not isinstance(task.submission_data_url, str) or not IMAGE_REFERENCE.match(task.submission_data_url):
        raise TaskFailure(f"submission_data_url {str(task.submission_data_url)[:200]!r} is not an image reference")


def is_submission_id(text: str) -> bool:
    """FAB's submission ids are UUIDs; anything else would name a folder it must not."""
    try:
        return str(uuid.UUID(text)) == text.lower()
    except (ValueError, AttributeError, TypeError):
        return False


@dataclass(frozen=True)
class FabHost:
    """What the host configures once for every task of its benchmark queue."""

    test_set: str
    scenarios: FabScenarios
    data_dir: str
    challenge: str = DEFAULT_CHALLENGE
    phase: str | None = None
    workers: int = 2
    agent_command: str | None = None  # a local command instead of the submission's image (no container engine)
    percentage_complete_threshold: float | None = None  # FAB's PERCENTAGE_COMPLETE_THRESHOLD (else the challenge's)
    running_time_limit: float | None = None  # FAB's RUNNING_TIME_LIMIT: seconds a scenario (else the challenge's)
    total_running_time_limit: float | None = None  # FAB's TOTAL_RUNNING_TIME_LIMIT (else the challenge's)
    sandbox: bool = True


def agent_settings(task: FabTask, host: FabHost) -> dict[str, Any]:
    """How the submission's agent starts: the `RunSettings` fields. The one seam between the
    submission's image (its flatland Policy, read from POLICY / OBS_BUILDER by `POLICY_AGENT`) and a
    host's local command."""
    if host.agent_command:
        return {"agent_command": host.agent_command}
    return {"agent_image": prepare_image(task.submission_data_url), "agent_command": POLICY_AGENT}


IMAGE_PULL_TIMEOUT_S = 1800.0  # FAB's wait_for_pod_to_run_limit of today: a slow pull of a large image


def prepare_image(image: str) -> str:
    """The submission image on this machine's engine, pulled when the engine does not have it (FAB's
    orchestrator pulls before every scenario; an image already here is used as it is), and what flateval
    brings into it prepared; `TaskFailure` with the engine's one line otherwise."""
    from env_worker.container import BridgeDepsError, EngineError, bridge_deps_dir, find_engine

    try:
        engine = find_engine()
        try:
            engine.image(image)
        except EngineError:
            engine.run("pull", image, timeout_s=IMAGE_PULL_TIMEOUT_S)
            engine.image(image)
        bridge_deps_dir()
    except (EngineError, BridgeDepsError) as exc:
        raise TaskFailure(f"Failed to run the submission image {image}: {exc}") from None
    return image


def scenario_scores(data_dir: Path, scenario_id: str, rewards: Any = None) -> tuple[float, float]:
    """(normalized_reward, percentage_complete) of one recorded scenario, exactly as FAB's orchestrator
    computes them (``FlatlandBenchmarksOrchestrator._extract_stats_from_trajectory_``): flatland's
    `TrajectoryEvaluator` replays the trajectory from its serialised state and asserts every step
    (an AssertionError if it does not replay), then the reward is the env's own
    ``rewards.normalize`` over every recorded reward, the completion the ``trains_arrived`` row's."""
    from flatland.evaluators.trajectory_evaluator import TrajectoryEvaluator
    from flatland.trajectories.trajectories import Trajectory

    trajectory = Trajectory.load_existing(data_dir=data_dir, ep_id=scenario_id)
    TrajectoryEvaluator(trajectory).evaluate(tqdm_kwargs={"disable": True}, rewards=rewards)
    rail_env = trajectory.load_env()
    arrived = trajectory.trains_arrived
    assert len(arrived) == 1, f"{len(arrived)} trains_arrived rows (the episode did not end)"
    success_rate = arrived.iloc[0]["success_rate"]
    rewards_dones_infos = trajectory.trains_rewards_dones_infos
    num_agents = rewards_dones_infos["agent_id"].max() + 1
    normalized_reward = rail_env.rewards.normalize(*rewards_dones_infos["reward"].to_list(), num_agents=num_agents,
                                                   max_episode_steps=rail_env._max_episode_steps)
    return float(normalized_reward), float(success_rate)


def plan_task(scenarios: list[FabScenario], host: FabHost, record_dir: Path):
    """The flateval plan of a task's scenarios: the challenge's rules with the host's FAB limits, one
    episode per scenario (test = its test's place, so a completion gate works test by test), each
    recorded under its scenario id."""
    from broker.plan import PlannedEpisode, make_plan, with_recording
    from core.challenge import load_challenge
    from core.settings import DEFAULT_ENV_SEED

    rules = load_challenge(host.challenge)
    phase = rules.phase(host.phase)
    seed = rules.seed if rules.seed is not None else DEFAULT_ENV_SEED
    root = Path(host.test_set).resolve()
    missing = [s for s in scenarios if not (root / s.env_file).is_file()]
    if missing:
        raise TaskFailure(f"scenario {missing[0].scenario_id} of test {missing[0].test_id}: no env file "
                          f"{missing[0].env_file} in the test set")
    episodes = [PlannedEpisode(env_file=s.env_file, seed=seed, env_path=str(root / s.env_file), test=s.test_index,
                               level=i, test_id=s.test_id, scenario_id=s.scenario_id)
                for i, s in enumerate(scenarios)]
    plan = make_plan(episodes, replace(phase, episodes=None), challenge=rules.name, seed=seed,
                     reset=rules.reset, test_set=str(root), overall_timeout_s=host.total_running_time_limit)
    plan = with_recording(plan, replace(rules.recording, videos=()), str(record_dir))
    if host.percentage_complete_threshold is not None:
        plan = replace(plan, completion_gate=host.percentage_complete_threshold)
    if host.running_time_limit is not None:
        plan = replace(plan, template=replace(plan.template, episode_timeout_s=host.running_time_limit))
    return plan


def rewards_path(name: str) -> str:
    """A challenge's rewards class (a name in flatland.envs.rewards) as flatland's ``--rewards`` names it."""
    from core.challenge import REWARDS_MODULE

    return f"{REWARDS_MODULE}.{name}"


def rewards_object(name: str) -> Any:
    """The rewards object the challenge scores with, as FAB passes ``--rewards`` to the evaluator."""
    from flatland.envs import rewards

    return getattr(rewards, name)()


def _failure_of(episode: dict[str, Any], scenario: FabScenario) -> str | None:
    if episode.get("outcome") == "completed":
        return None
    error = f": {episode['error']}" if episode.get("error") else ""
    return (f"The evaluation of test_id={scenario.test_id}, scenario_id={scenario.scenario_id} failed: "
            f"{episode.get('outcome')}{error}")


def _gate_cause(document: dict[str, Any], scenarios: list[FabScenario]) -> str | None:
    """FAB's message for a test whose mean completion stopped the evaluation (under the plan's gate:
    the host's threshold, else the challenge's)."""
    if not document.get("stopped_by"):
        return None
    by_index = {e["index"]: e for e in document["episodes"]}
    done_tests = sorted({s.test_index for i, s in enumerate(scenarios) if i in by_index})
    last = done_tests[-1] if done_tests else 0
    members = [i for i, s in enumerate(scenarios) if s.test_index == last]
    values = [by_index[i].get("percentage_complete") for i in members if i in by_index]
    mean = fmean(v for v in values if v is not None) if any(v is not None for v in values) else 0.0
    test_id = scenarios[members[0]].test_id
    return (f"The mean percentage of done agents during the last test {test_id} ({len(members)} environments) "
            f"was too low: {mean} < {document['settings']['completion_gate']}")


class FabOrchestrator:
    """FAB's orchestrator contract for one host: `run(task)` evaluates a task and reports it to FAB."""

    def __init__(self, host: FabHost, api: FabApi) -> None:
        self.host, self.api = host, api

    def run(self, task: FabTask) -> tuple[dict[str, dict[str, dict[str, float]]], str | None]:
        """Evaluate and report; return (test id -> scenario id -> scores, the termination cause) as FAB's
        orchestrator returns them. Raises what failed, after posting FAILURE, as FAB's does."""
        sid = task.submission_id
        if not is_submission_id(sid):  # FAB's API takes none but UUIDs: nothing to post to
            raise TaskFailure(f"task id {str(sid)[:100]!r} is not a FAB submission id (a UUID)")
        self.api.post_status(sid, STARTED)
        try:
            check_task(task)
            results, cause = self._evaluate(task)
        except TaskFailure as exc:
            self.api.post_status(sid, FAILURE, exc.message)
            raise
        except Exception:
            log.exception("flateval: the evaluation of submission %s failed", sid)
            self.api.post_status(sid, FAILURE, GENERAL_FAILURE)
            raise
        self.api.post_status(sid, SUCCESS if cause is None else FAILURE, cause)
        return results, cause

    def _evaluate(self, task: FabTask) -> tuple[dict[str, dict[str, dict[str, float]]], str | None]:
        from core.settings import RunSettings
        from flateval.local_run import RunError, run_local

        sid, host = task.submission_id, self.host
        if not task.tests:
            raise TaskFailure(f"Failed running submission_id={sid},tests={task.tests} as not tests passed.")
        try:
            scenarios = host.scenarios.for_tests(task.tests)
        except FabScenariosError as exc:
            raise TaskFailure(str(exc)) from None
        data_dir = Path(host.data_dir)
        submission_dir = data_dir / sid
        plan = plan_task(scenarios, host, data_dir)
        settings = RunSettings(workers=host.workers, sandbox=host.sandbox, **agent_settings(task, host))
        checks = _ScenarioChecks(self.api, sid, task.tests, scenarios, submission_dir, rewards_object(plan.template.rewards))
        started = time.monotonic()
        try:
            document = run_local(settings, plan, on_progress=lambda episodes, record: checks.take(episodes),
                                      on_notice=lambda line: log.info("flateval: FAB submission %s: %s", sid, line))
            checks.take(document["episodes"])
        except RunError as exc:  # before any episode: nothing recorded
            raise TaskFailure(f"Failed running submission_id={sid}: {exc}") from None
        finally:
            checks.finish()
        shutil.rmtree(data_dir / document["submission_id"], ignore_errors=True)  # what was not moved (never a UUID)
        log.info("flateval: FAB submission %s: %d scenarios evaluated and re-checked in %.1f s", sid,
                 len(document["episodes"]), time.monotonic() - started)
        causes = checks.causes
        if document["status"] == "failed" and document.get("error"):
            causes.append(document["error"])
        gate = _gate_cause(document, scenarios)
        if gate:
            causes.append(gate)
        try:
            self.api.post_scores(sid, checks.results)
        except FabApiError as exc:
            raise TaskFailure(str(exc)) from None
        return checks.results, ("; ".join(causes) if causes else None)


class _ScenarioChecks:
    """Each scenario of a task as its result arrives (while the others still play): its recording moved
    into FAB's layout and re-checked as FAB's orchestrator does, or its failure noted."""

    def __init__(self, api: FabApi, sid: str, tests: list[str], scenarios: list[FabScenario], submission_dir: Path,
                 rewards: Any) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.api, self.sid, self.scenarios, self.submission_dir, self.rewards = api, sid, scenarios, submission_dir, rewards
        self.results: dict[str, dict[str, dict[str, float]]] = {test_id: {} for test_id in tests}
        self.causes: list[str] = []
        self.seen: set[int] = set()
        # one thread, in arrival order: the cluster's follower (deadlines, dead workers) is never held up
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fab-check")
        self.pending: list = []

    def take(self, episodes: list[dict[str, Any]]) -> None:
        for episode in sorted(episodes, key=lambda e: e["index"]):
            if episode["index"] not in self.seen:
                self.seen.add(episode["index"])
                self.pending.append(self.pool.submit(self._check, episode, self.scenarios[episode["index"]]))

    def finish(self) -> None:
        """Wait for every check taken (an error of the check itself is raised here)."""
        self.pool.shutdown(wait=True)
        for future in self.pending:
            future.result()

    def _check(self, episode: dict[str, Any], scenario: FabScenario) -> None:
        failure = _failure_of(episode, scenario)
        if failure:
            self.causes.append(failure)
            return
        self.api.post_status(self.sid, STARTED, f"Run evaluation env_path={scenario.env_file} test {scenario.test_id} "
                                                f"- scenario {scenario.scenario_id}")
        if not episode.get("trajectory"):
            self.causes.append(f"The trajectory of test_id={scenario.test_id}, scenario_id={scenario.scenario_id} "
                               "could not be recorded (see the fab-worker's log)")
            return
        target = self.submission_dir / scenario.test_id / scenario.scenario_id
        try:
            _move(Path(episode["trajectory"]), target)
            reward, complete = scenario_scores(target, scenario.scenario_id, self.rewards)
        except Exception as exc:
            self.causes.append(f"The trajectory of test_id={scenario.test_id}, scenario_id={scenario.scenario_id} "
                               f"does not replay: {type(exc).__name__}: {exc}")
            return
        self.results[scenario.test_id][scenario.scenario_id] = {"normalized_reward": reward,
                                                                "percentage_complete": complete}


def _move(recording: Path, target: Path) -> None:
    """A recording to ``<submission>/<test id>/<scenario id>`` (one rename: the same filesystem)."""
    if target.exists():
        shutil.rmtree(target)  # a redelivered task's earlier attempt
    target.parent.mkdir(parents=True, exist_ok=True)
    recording.rename(target)
