"""FlatlandRemoteClient scripts, unchanged, as flateval agents.

Every online Flatland submission (the NeurIPS 2020 starter kits, flatland-baselines' online demo) is
a script built on flatland-rl's ``flatland.evaluators.client.FlatlandRemoteClient``. This module is
that client for flateval, with flatland-rl 4.3's public API:

    python -m agent_bridge.flatland_remote run.py [ARGS...]

runs ``run.py`` exactly as ``python run.py ARGS`` would, with ``flatland.evaluators.client``'s
``FlatlandRemoteClient`` and ``TimeoutException`` resolved to the ones here. The client serves on
``$FLATEVAL_AGENT_BIND`` like every agent; it needs no Redis, no environment variables and no test
set: the evaluator sends each episode's env file (replica mode, docs/protocol.md section 15).

As flatland's own client did, it keeps its own copy of the env (`env`, a RailEnv with the script's
observation builder), so observations are built on the participant's cores, and it steps that copy
while the evaluator steps the authoritative one. Deadlines are the NeurIPS 2020 rules: planning
runs from the episode's start to the first `env_step`, each step from the evaluator's request to
the next `env_step`. A missed deadline raises `TimeoutException` once, from the next `env_step`;
the next `env_create` starts the next episode. When the evaluation is over (SIGTERM), a script
waiting in `env_create` gets ``(False, False)``. Nothing is ever pickled: `use_pickle` is accepted
and ignored.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from agent_bridge import protocol as wire
from agent_bridge.deferred_imports import defer_imports
from agent_bridge.flatland_replica import Replica, ReplicaDiverged
from agent_bridge.router_endpoint import Request, RouterEndpoint
from agent_bridge.server import plain_actions

FLATLAND_RL_SERVICE_ID = os.getenv("AICROWD_SUBMISSION_ID", "T12345")


class TimeoutException(StopAsyncIteration):
    """Custom exception for evaluation timeouts (flatland's, as scripts catch it)."""


class _EvaluationOver(Exception):
    """SIGTERM while waiting for the evaluator: there is no next episode."""


@dataclass
class _Episode:
    episode_id: str
    start: Request | None  # the episode_start, until the first env_step answers it
    lost: str | None = None  # why the evaluator cut it (or why it cannot go on)


@dataclass
class _Summary:
    """What `submit` reports: the episodes as the evaluator scored them."""

    normalized: list[float] = field(default_factory=list)
    complete: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)

    def add(self, message: Mapping[str, Any]) -> None:
        if message.get("normalized_return") is not None:
            self.normalized.append(float(message["normalized_return"]))
            self.complete.append(float(message.get("percentage_complete") or 0.0))
        if message.get("reward") is not None:
            self.rewards.append(float(message["reward"]))

    def as_flatland(self) -> dict:
        """flatland's `submit()` keys."""
        def mean(values: list[float]) -> float | None:
            return sum(values) / len(values) if values else None

        return {
            "mean_reward": None if not self.rewards else round(mean(self.rewards), 2),
            "sum_normalized_reward": float(sum(self.normalized)),
            "mean_percentage_complete": None if not self.complete else round(mean(self.complete), 3),
            "mean_normalized_reward": None if not self.normalized else round(mean(self.normalized), 5),
        }


class FlatlandRemoteClient:
    """flatland-rl 4.3's client API, served to a flateval env worker (see the module docstring)."""

    def __init__(self, test_env_folder: str | None = None, flatland_rl_service_id: str = FLATLAND_RL_SERVICE_ID,
                 remote_host: str = os.getenv("redis_ip", "127.0.0.1"), remote_port: int = 6379, remote_db: int = 0,
                 remote_password: str | None = None, verbose: bool = False, use_pickle: bool = False) -> None:
        # flatland's public attributes, for scripts that read them; none of them reaches anything
        self.remote_host, self.remote_port, self.remote_db = remote_host, remote_port, remote_db
        self.remote_password = remote_password
        self.service_id = flatland_rl_service_id
        self.namespace = "flatland-rl"
        self.command_channel = f"{self.namespace}::{self.service_id}::commands"
        self.error_channel = f"{self.namespace}::{self.service_id}::errors"
        self.redis_pool = self.redis_conn = None  # no Redis: the evaluator talks over ZeroMQ
        self.use_pickle = use_pickle  # ignored: nothing is ever pickled
        self.verbose = verbose
        self.env: Any = None
        self.current_env_path: str | None = None
        self.env_step_times: list[float] = []
        self.stats: dict[str, float] = {}
        self._replica = Replica()
        self.test_envs_root = str(self._replica.root)
        self._endpoint = RouterEndpoint(log=self._log)
        self._inbox: deque[Request] = deque()
        self._episode: _Episode | None = None
        self._summary = _Summary()
        self._over = False  # SIGTERM: the evaluation is over
        self.last_env_step_time = time.time()
        _end_on_sigterm(self)

    # ------------------------------------------------------------------------------ flatland's API
    def ping_pong(self) -> bool:
        return True

    def get_redis_connection(self) -> None:
        return None

    def update_running_stats(self, key: str, scalar: float) -> None:
        """Running mean, min and max of `key` (flatland's client statistics)."""
        count = self.stats.get(f"{key}_counter", 0)
        if not count:
            self.stats.update({f"{key}_mean": scalar, f"{key}_min": scalar, f"{key}_max": scalar})
        else:
            self.stats[f"{key}_mean"] = (self.stats[f"{key}_mean"] * count + scalar) / (count + 1)
            self.stats[f"{key}_min"] = min(self.stats[f"{key}_min"], scalar)
            self.stats[f"{key}_max"] = max(self.stats[f"{key}_max"], scalar)
        self.stats[f"{key}_counter"] = count + 1

    def env_create(self, obs_builder_object: Any = None) -> tuple[Any, Any]:
        """Wait for the next episode; return the observations and info of this client's own copy of
        its env (`env`), or ``(False, False)`` when the evaluation is over."""
        if obs_builder_object is None:
            from flatland.core.env_observation_builder import DummyObservationBuilder

            obs_builder_object = DummyObservationBuilder()
        waited = time.time()
        self._episode = None
        try:
            while True:
                request = self._next()
                if self._control(request) or request.type != wire.EPISODE_START:
                    continue  # a step of an episode that is over: nobody waits for its answer
                if not isinstance(request.message.get("replica"), Mapping):
                    self._endpoint.reply(request, wire.error_reply(
                        "FlatlandRemoteClient needs the env file (replica mode), which this evaluator did not send"))
                    continue
                break
        except _EvaluationOver:
            return False, False
        self.update_running_stats("env_creation_wait_time", time.time() - waited)
        started = time.time()
        try:
            observation, info = self._replica.start(request.message, obs_builder_object)
        except Exception as exc:  # not loadable here: say why to the evaluator, then let the script see it
            self._endpoint.reply(request, wire.error_reply(f"the replica cannot load this env: "
                                                           f"{type(exc).__name__}: {exc}"))
            raise
        self.update_running_stats("internal_env_reset_time", time.time() - started)
        self.env = self._replica.env
        self.current_env_path = str(self._replica.path)
        self._episode = _Episode(str(request.message.get("episode_id", "")), request)
        self.last_env_step_time = time.time()
        return observation, info

    def env_step(self, action: Mapping[Any, Any], render: bool = False) -> list:
        """Send this step's actions, step the local copy with them; return its
        ``[observations, rewards, done, info]``. Raises `TimeoutException` (once) when the evaluator
        cut the episode."""
        episode = self._episode
        if episode is None:
            raise Exception("env_step without an episode: call env_create first (or the last one was cut)")
        actions = plain_actions(action or {})
        self.update_running_stats("inference_time(approx)", time.time() - self.last_env_step_time)
        request = self._answerable(episode)
        self._endpoint.reply(request, wire.act_reply(actions))
        started = time.time()
        observation, rewards, done, info = self._replica.step(actions)
        self.update_running_stats("internal_env_step_time", time.time() - started)
        self.last_env_step_time = time.time()
        return [observation, rewards, done, info]

    def submit(self) -> dict:
        """Print the client's statistics as flatland's client does; return the evaluation's summary
        with flatland's keys, from the episodes the evaluator reported to this process."""
        print("=" * 100)
        print("=" * 100)
        print("## Client Performance Stats")
        print("=" * 100)
        for key in self.stats:
            if key.endswith("_mean"):
                name = key[: -len("_mean")]
                print(f"\t - {name}\t => min: {self.stats[name + '_min']} || mean: {self.stats[key]} || "
                      f"max: {self.stats[name + '_max']}")
        print("=" * 100)
        sys.stdout.flush()
        return self._summary.as_flatland()

    # ------------------------------------------------------------------------------ the link
    def _answerable(self, episode: _Episode) -> Request:
        """The request this step's actions answer: the episode's start, else the evaluator's next
        step, once its rewards and dones are checked against the replica's. A notice that the
        episode was cut may already be waiting (the script was late): it is read first."""
        self._inbox.extend(self._endpoint.receive_ready())
        self._settle(episode)
        try:
            while episode.lost is None:
                if episode.start is not None:
                    request, episode.start = episode.start, None
                    return request
                request = self._next()
                if self._control(request):
                    continue
                if request.type == wire.EPISODE_START:  # a new episode: this one is over, announced or not
                    self._inbox.appendleft(request)
                    episode.lost = "the evaluator started the next episode"
                elif request.type == wire.STEP:
                    try:
                        self._replica.check(request.message)
                    except ReplicaDiverged as exc:
                        self._endpoint.reply(request, wire.error_reply(f"replica diverged: {exc}"))
                        episode.lost = f"this client's env diverged from the evaluator's: {exc}"
                        continue
                    return request
        except _EvaluationOver:
            episode.lost = "the evaluation is over"
        self._episode = None
        self._log(f"episode {episode.episode_id}: {episode.lost}")
        raise TimeoutException(episode.lost)

    def _settle(self, episode: _Episode) -> None:
        """Answer the notices among the requests already read, in order; a next episode's start
        stays queued for `env_create` and means this episode is over."""
        queued, self._inbox = self._inbox, deque()
        for request in queued:
            if self._control(request):
                continue
            if request.type == wire.EPISODE_START:
                episode.lost = episode.lost or "the evaluator started the next episode"
            self._inbox.append(request)

    def _control(self, request: Request) -> bool:
        """Answer what needs no script: the handshake, notices, the end of an episode. True if it was one."""
        kind, message = request.type, request.message
        if kind == wire.HELLO:
            self._endpoint.reply(request, wire.hello_reply("FlatlandRemoteClient", {"builder": "none"}, replica=True))
        elif kind in (wire.ABORTED, wire.EPISODE_END):
            episode = self._episode
            mine = episode is not None and message.get("episode_id") == episode.episode_id
            if kind == wire.EPISODE_END and mine:
                try:
                    self._replica.check(message)
                except ReplicaDiverged as exc:
                    self._log(f"episode {episode.episode_id}: the last step diverged: {exc}")
            if kind == wire.ABORTED and mine and episode.lost is None:
                episode.lost = f"the evaluator cut the episode: {message.get('reason')}"
            self._summary.add(message)
            self._endpoint.reply(request, wire.ok_reply())
        else:
            return False
        return True

    def _next(self) -> Request:
        if self._inbox:
            return self._inbox.popleft()
        request = self._endpoint.receive(interrupted=lambda: self._over)
        if request is None:
            raise _EvaluationOver
        return request

    def _log(self, text: str) -> None:
        print(f"[flateval FlatlandRemoteClient] {text}", file=sys.stderr, flush=True)


def _end_on_sigterm(client: FlatlandRemoteClient) -> None:
    """SIGTERM (the evaluation is over, the worker stops its agent): a script waiting for the next
    episode gets ``(False, False)``; one busy in its own code is not interrupted (the handler only
    takes note)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def over(signum: int, frame: Any) -> None:
        client._over = True

    signal.signal(signal.SIGTERM, over)


def install_as_flatland_client() -> None:
    """Make ``flatland.evaluators.client`` resolve to this client (its other names stay flatland's)."""
    import importlib
    import types

    shim = types.ModuleType("flatland.evaluators.client", __doc__)
    try:
        real = importlib.import_module("flatland.evaluators.client")
        shim.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
    except ImportError:  # no redis in the agent's image: only our names, which is what scripts use
        pass
    shim.FlatlandRemoteClient, shim.TimeoutException = FlatlandRemoteClient, TimeoutException
    shim.FLATLAND_RL_SERVICE_ID = FLATLAND_RL_SERVICE_ID
    sys.modules["flatland.evaluators.client"] = shim
    import flatland.evaluators

    flatland.evaluators.client = shim


def main(argv: list[str] | None = None) -> int:
    """``python -m agent_bridge.flatland_remote SCRIPT [ARGS...]``: run SCRIPT as ``python SCRIPT ARGS``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[1].strip() if argv else "usage: python -m agent_bridge.flatland_remote SCRIPT "
              "[ARGS...]", file=sys.stderr)
        return 0 if argv else 2
    script = Path(argv[0])
    if not script.is_file():
        print(f"agent_bridge.flatland_remote: no script {script}", file=sys.stderr)
        return 2
    defer_imports()  # before flatland loads: its matplotlib.pyplot costs every start 0.2-0.3 s, for nothing
    install_as_flatland_client()
    sys.argv = [str(script), *argv[1:]]
    sys.path[0] = str(script.resolve().parent)
    runpy.run_path(str(script), run_name="__main__")
    return 0


if __name__ == "__main__":
    from agent_bridge.flatland_remote import main as _main  # the importable module's classes, not __main__'s
    from agent_bridge.process_exit import run_then_exit

    run_then_exit(_main)  # no interpreter teardown to wait for (torch's takes half a second)
