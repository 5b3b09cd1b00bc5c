"""The episode loop: one env, one agent, deadlines enforced, one `EpisodeResult` out.

The loop stays short on purpose. Metrics, logs and recording hang on it as observers
(`env_worker.observers`), the way middleware hangs off a dramatiq worker.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

from agent_bridge import protocol as wire
from core.episode_spec import EpisodeSpec
from core.outcomes import AGENT_ERROR, COMPLETED, ENV_ERROR, STOPPED
from core.settings import NO_DEADLINE_S
from env_worker.agent_link import AgentFault, AgentLink, AgentTimeout, PendingReply
from env_worker.env_adapter import EnvAdapter, EnvLoadError, ObservationNotAllowed, StepOutcome
from env_worker.env_factory import make_env
from env_worker.observers import EpisodeObserver
from env_worker.replica import replica_episode_start
from scoring.episode import EpisodeResult, ResponseStats, episode_score, percentage_complete


class EpisodeStopped(Exception):
    """The submission ended (cancelled, out of time) while this episode ran."""


def run_episode(spec: EpisodeSpec, link: AgentLink, observers: Sequence[EpisodeObserver] = (),
                stop: Callable[[], str | None] | None = None) -> EpisodeResult:
    """Play one episode against the agent behind `link`; never raises for agent or env faults.

    `stop` is asked after every step (so it must be cheap): a reason string ends the episode at
    once with outcome ``stopped``, which no submission ever scores.
    """
    started = time.perf_counter()
    clock = EpisodeClock(spec, started)
    stats = ResponseStats(time_bank_left_s=spec.time_bank_s)
    for observer in observers:
        observer.episode_started(spec)
    env: EnvAdapter | None = None
    pending: PendingReply | None = None
    steps, outcome, error, observation, out, replica = 0, COMPLETED, None, None, None, False
    try:
        budget, by_wall = clock.budget(spec.planning_timeout_s)  # planning: the handshake and the first actions
        hello, took = clock.request(link, wire.hello_request(), budget, by_wall)
        replica = bool(hello.get("replica"))
        if replica:  # the agent loads the env file itself, while we load ours
            budget, by_wall = clock.budget(_less(spec.planning_timeout_s, took))
            pending = link.send(replica_episode_start(spec), budget)
            env = make_env(spec)
            observation = env.serve_replica()
            env.reset()
            _reset(observers, env)
        else:
            env = make_env(spec)
            observation = env.use_observation(hello.get("observation"))
            obs, info = env.reset()
            _reset(observers, env)
            budget, by_wall = clock.budget(_less(spec.planning_timeout_s, took))  # our env's loading is ours
            pending = link.send(wire.episode_start_request(
                episode_id=spec.episode_id, env_file=spec.env_file, seed=spec.seed, env=env.facts(),
                observation=observation, planning_s=spec.planning_timeout_s, step_s=spec.step_timeout_s,
                observations=obs, info=info, time_bank_s=spec.time_bank_s), budget)
        reply, took2 = clock.receive(link, pending, by_wall)
        pending = None
        stats.planning_s = took + took2
        _replied(observers, took + took2, "planning")
        step_limit = env.score_inputs().max_episode_steps or math.inf  # none: the env alone ends it
        while True:
            actions = env.parse_actions(reply)
            stepped = time.perf_counter()
            out = env.step(actions)
            steps += 1
            for observer in observers:
                observer.env_stepped(time.perf_counter() - stepped, actions, out)
            if out.done or steps >= step_limit:
                break
            if stop is not None and (reason := stop()):
                raise EpisodeStopped(reason)
            reply, took = _step(link, wire.step_request(steps, out.observations, out.rewards, out.dones, out.info),
                                spec.step_timeout_s, stats, clock)
            stats.add(took)
            _replied(observers, took, "step")
    except AgentFault as exc:
        outcome, error = exc.outcome, f"{exc} (step {steps})"
    except EpisodeStopped as exc:
        outcome, error = STOPPED, f"{exc} (step {steps})"
    except (wire.ProtocolError, ObservationNotAllowed) as exc:
        outcome, error = AGENT_ERROR, f"{exc} (step {steps})"
    except EnvLoadError as exc:  # the host's env file: its problem, not the agent's
        outcome, error = ENV_ERROR, str(exc)
    except Exception as exc:  # the env itself failed: the host's problem, not the agent's
        outcome, error = ENV_ERROR, f"env failed at step {steps}: {type(exc).__name__}: {exc}"
    if pending is not None:
        link.reset()  # a request is out that we will not wait for: a late reply must not be taken for another's

    result = _result(spec, env, outcome, error, steps, stats, observation)
    if outcome == COMPLETED:
        _say_goodbye(link, spec, result, out if replica else None)
    else:
        link.notify_aborted(spec.episode_id, error, result.normalized_return)
    result.duration_s = time.perf_counter() - started
    return _finish(observers, result)


def _less(deadline_s: float | None, spent_s: float) -> float | None:
    return None if deadline_s is None else deadline_s - spent_s


class EpisodeClock:
    """The episode's wall limit (``episode_timeout_s``, FAB's per-scenario limit) over its deadlines:
    each request waits its own deadline or what is left of the episode, whichever ends first, and a
    miss says which one ran out."""

    def __init__(self, spec: EpisodeSpec, started: float) -> None:
        self.limit_s = spec.episode_timeout_s
        self.ends = None if self.limit_s is None else started + self.limit_s

    def budget(self, deadline_s: float | None) -> tuple[float, bool]:
        """(seconds to wait, whether the episode's wall limit is what bounds them)."""
        wait = deadline_s if deadline_s is not None else math.inf
        left = self.ends - time.perf_counter() if self.ends is not None else math.inf
        if left < wait:
            return max(0.0, left), True
        return (wait if wait != math.inf else NO_DEADLINE_S), False

    def request(self, link: AgentLink, message: dict, budget: float, by_wall: bool) -> tuple[dict, float]:
        return self.receive(link, link.send(message, budget), by_wall)

    def receive(self, link: AgentLink, pending: PendingReply, by_wall: bool) -> tuple[dict, float]:
        try:
            return link.receive(pending)
        except AgentTimeout as exc:
            if by_wall:
                raise AgentTimeout(f"the episode's time limit ({self.limit_s:g} s) ran out waiting for "
                                   f"'{pending.kind}'") from None
            raise exc


def _step(link: AgentLink, request: dict, step_s: float | None, stats: ResponseStats,
          clock: EpisodeClock) -> tuple[dict, float]:
    """One step's request, with the step deadline plus what is left of the episode's time bank (if
    the challenge gives one), within the episode's wall limit; a reply past the step deadline draws
    the overage from the bank."""
    bank = stats.time_bank_left_s if step_s is not None else None
    budget, by_wall = clock.budget(None if step_s is None else step_s + (bank or 0.0))
    try:
        reply, took = clock.request(link, request, budget, by_wall)
    except AgentTimeout as exc:
        if bank is None or by_wall:
            raise
        raise AgentTimeout(f"{exc}: the step deadline ({step_s:g} s) plus the {bank:.3f} s left in the time "
                           f"bank") from None
    if bank is not None:
        stats.time_bank_left_s = max(0.0, bank - max(0.0, took - step_s))
    return reply, took


def _result(spec: EpisodeSpec, env: "EnvAdapter | None", outcome: str, error: str | None, steps: int,
            stats: ResponseStats, observation: dict | None) -> EpisodeResult:
    record = dict(env_file=spec.env_file, test=spec.test, level=spec.level, seed=spec.seed, env=spec.env,
                  test_id=spec.test_id, scenario_id=spec.scenario_id)
    if env is None and outcome != ENV_ERROR:  # lost before the env was loaded: load it for the record
        try:
            env = make_env(spec)
        except EnvLoadError as exc:  # a broken env file is the host's fault first
            outcome, error = ENV_ERROR, str(exc)
    if env is None:  # it could not even be loaded
        return EpisodeResult(**record, outcome=outcome, normalized_return=None, percentage_complete=None, steps=0,
                             cumulative_reward=None, duration_s=0.0, error=error, agent_response=stats.as_dict())
    totals = env.score_inputs()
    env.release()
    return EpisodeResult(
        **record, outcome=outcome, normalized_return=episode_score(outcome, totals, spec),
        percentage_complete=None if not totals.n_agents or totals.n_done is None
        else percentage_complete(totals.n_done, totals.n_agents),
        steps=steps, cumulative_reward=totals.cumulative_reward, duration_s=0.0,
        agent_response=stats.as_dict(), error=error, n_agents=totals.n_agents,
        max_episode_steps=totals.max_episode_steps, observation=observation)


def _reset(observers: Sequence[EpisodeObserver], env: "EnvAdapter") -> None:
    for observer in observers:
        observer.env_reset(env)


def _say_goodbye(link: AgentLink, spec: EpisodeSpec, result: EpisodeResult, last: StepOutcome | None) -> None:
    """Send ``episode_end`` (to a replica, with the last step's rewards and dones to check); the score
    is already fixed, so a silent agent changes nothing."""
    try:
        link.request(wire.episode_end_request(
            episode_id=spec.episode_id, outcome=result.outcome, normalized_return=result.normalized_return,
            percentage_complete=result.percentage_complete, steps=result.steps, reward=result.cumulative_reward,
            rewards=last.rewards if last else None, dones=last.dones if last else None), spec.notice_timeout_s)
    except AgentFault:
        pass


def _replied(observers: Sequence[EpisodeObserver], seconds: float, phase: str) -> None:
    for observer in observers:
        observer.agent_replied(seconds, phase)


def _finish(observers: Sequence[EpisodeObserver], result: EpisodeResult) -> EpisodeResult:
    for observer in observers:
        observer.episode_ended(result)
    return result
