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
from env_worker.agent_link import AgentFault, AgentLink
from env_worker.env_adapter import EnvLoadError, ObservationNotAllowed
from env_worker.env_factory import make_env
from env_worker.observers import EpisodeObserver
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
    stats = ResponseStats()
    record = dict(env_file=spec.env_file, test=spec.test, level=spec.level, seed=spec.seed, env=spec.env)
    for observer in observers:
        observer.episode_started(spec)
    try:
        env = make_env(spec)
    except EnvLoadError as exc:
        return _finish(observers, EpisodeResult(
            **record, outcome=ENV_ERROR, normalized_return=None, percentage_complete=None, steps=0,
            cumulative_reward=None, duration_s=time.perf_counter() - started, error=str(exc)))

    steps, outcome, error, observation = 0, COMPLETED, None, None
    try:
        budget = spec.planning_timeout_s  # planning covers the handshake and the first actions
        hello, took = link.request(wire.hello_request(), budget)
        observation = env.use_observation(hello.get("observation"))
        obs, info = env.reset()
        for observer in observers:
            observer.env_reset(env)
        start = wire.episode_start_request(
            episode_id=spec.episode_id, env_file=spec.env_file, seed=spec.seed, env=env.facts(),
            observation=observation, planning_s=spec.planning_timeout_s, step_s=spec.step_timeout_s,
            observations=obs, info=info)
        reply, took2 = link.request(start, budget - took)
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
            reply, took = link.request(wire.step_request(steps, out.observations, out.rewards, out.dones, out.info),
                                       spec.step_timeout_s)
            stats.add(took)
            _replied(observers, took, "step")
    except AgentFault as exc:
        outcome, error = exc.outcome, f"{exc} (step {steps})"
        link.notify_aborted(spec.episode_id, error)
    except EpisodeStopped as exc:
        outcome, error = STOPPED, f"{exc} (step {steps})"
        link.notify_aborted(spec.episode_id, error)
    except (wire.ProtocolError, ObservationNotAllowed) as exc:
        outcome, error = AGENT_ERROR, f"{exc} (step {steps})"
        link.notify_aborted(spec.episode_id, error)
    except Exception as exc:  # the env itself failed: the host's problem, not the agent's
        outcome, error = ENV_ERROR, f"env failed at step {steps}: {type(exc).__name__}: {exc}"
        link.notify_aborted(spec.episode_id, error)

    totals = env.score_inputs()
    env.release()
    result = EpisodeResult(
        **record, outcome=outcome, normalized_return=episode_score(outcome, totals, spec),
        percentage_complete=None if not totals.n_agents or totals.n_done is None
        else percentage_complete(totals.n_done, totals.n_agents),
        steps=steps, cumulative_reward=totals.cumulative_reward, duration_s=0.0,
        agent_response=stats.as_dict(), error=error, n_agents=totals.n_agents,
        max_episode_steps=totals.max_episode_steps, observation=observation)
    if outcome == COMPLETED:
        _say_goodbye(link, spec, result)
    result.duration_s = time.perf_counter() - started
    return _finish(observers, result)


def _say_goodbye(link: AgentLink, spec: EpisodeSpec, result: EpisodeResult) -> None:
    """Send ``episode_end``; the score is already fixed, so a silent agent changes nothing."""
    try:
        link.request(wire.episode_end_request(
            episode_id=spec.episode_id, outcome=result.outcome, normalized_return=result.normalized_return,
            percentage_complete=result.percentage_complete, steps=result.steps), spec.step_timeout_s)
    except AgentFault:
        pass


def _replied(observers: Sequence[EpisodeObserver], seconds: float, phase: str) -> None:
    for observer in observers:
        observer.agent_replied(seconds, phase)


def _finish(observers: Sequence[EpisodeObserver], result: EpisodeResult) -> EpisodeResult:
    for observer in observers:
        observer.episode_ended(result)
    return result
