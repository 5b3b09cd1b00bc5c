"""Which env adapter plays an episode: the one its spec's ``env`` names."""

from __future__ import annotations

from env_worker.env_adapter import EnvAdapter, EnvLoadError
from env_worker.flatland_env import FlatlandEnv
from env_worker.gymnasium_env import GymnasiumEnv
from core.episode_spec import EpisodeSpec, parse_env
from core.settings import GYMNASIUM


def make_env(spec: EpisodeSpec) -> EnvAdapter:
    """Load the episode's env (Flatland from its env file, Gymnasium from its id); `EnvLoadError` if
    it cannot be (scored ``env_error``: the host's problem)."""
    try:
        kind, env_id = parse_env(spec.env)
    except ValueError as exc:
        raise EnvLoadError(f"env {spec.env!r}: {exc}") from None
    if kind == GYMNASIUM:
        return GymnasiumEnv(env_id, spec.seed)
    return FlatlandEnv(spec.env_path, spec.seed, spec.observation_builders, spec.rewards, reset=spec.reset)
