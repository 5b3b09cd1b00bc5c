"""Serving an agent that keeps its own copy of the env (replica mode, docs/protocol.md section 15).

Flatland's own client always loaded the env file itself and stepped its own copy, building its
observations on its own cores; FlatlandRemoteClient scripts and flatland `Policy` classes run that
way under flateval too. Such an agent asks for it in its ``hello``; its ``episode_start`` then
carries the env file and the reset seed instead of observations, and is sent before the env side
loads its own copy, so that both load at the same time.
"""

from __future__ import annotations

from pathlib import Path

from agent_bridge import protocol as wire
from core.episode_spec import EpisodeSpec, parse_env
from core.settings import FLATLAND
from env_worker.env_adapter import EnvLoadError

REPLICA_OBSERVATION = {"builder": "none"}
"""What the env side builds for a replica agent: nothing (the replica builds its own)."""


def replica_episode_start(spec: EpisodeSpec) -> dict:
    """``episode_start`` for a replica agent. Refused (`wire.ProtocolError`: an agent error) where the
    challenge does not share env files with agents, or the env is not Flatland's."""
    kind, _ = parse_env(spec.env)
    if kind != FLATLAND:
        raise wire.ProtocolError("replica mode is for Flatland envs only")
    if not spec.share_env_files:
        raise wire.ProtocolError("replica mode (an agent with its own copy of the env, e.g. a FlatlandRemoteClient "
                                 "script) needs the env files, and this challenge does not share them with agents "
                                 "(challenge key share_env_files)")
    return wire.episode_start_request(
        episode_id=spec.episode_id, env_file=spec.env_file, seed=spec.seed, env={"kind": wire.KIND_FLATLAND},
        observation=REPLICA_OBSERVATION, planning_s=spec.planning_timeout_s, step_s=spec.step_timeout_s,
        observations=None, info=None, replica=wire.replica_start(env_file_bytes(spec.env_path), spec.rewards, spec.reset),
        time_bank_s=spec.time_bank_s)


def env_file_bytes(path: str, cap: int = wire.MAX_ENV_FILE_BYTES) -> bytes:
    """The env file as sent to a replica; `EnvLoadError` (the host's problem) if unreadable or over `cap`."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(cap + 1)
    except OSError as exc:
        raise EnvLoadError(f"cannot read {Path(path).name}: {exc.strerror or exc}") from None
    if len(data) > cap:
        raise EnvLoadError(f"{Path(path).name} is larger than the {cap >> 20} MiB a replica agent may be sent")
    return data
