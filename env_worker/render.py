"""Replay videos of recorded episodes, made from the recording after the episode (never while it runs).

Flatland: the trajectory's serialised state (right after the reset) is stepped with its recorded
actions and drawn with flatland's RenderTool (``gl="PILSVG"``: no display needed), one frame for the
initial state and one per step. Gymnasium: ``gymnasium.make(env_id, render_mode="rgb_array")``,
reset with the recorded seed and stepped with the recorded actions. The video goes to the
recording's ``outputs/<ep_id>.<mp4|gif>`` (flatland's outputs dir, outside the digest).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from env_worker import record_folder
from env_worker.flatland_recorder import KIND as FLATLAND_KIND
from env_worker.gymnasium_recorder import KIND as GYMNASIUM_KIND, read_episode
from env_worker.video import Video, VideoError, encode


class RenderError(RuntimeError):
    """The episode cannot be rendered; the message is one line."""


def render_episode(folder: Path, fmt: str = "mp4", out: Path | None = None) -> Video:
    """Render the complete recording in `folder` to `out` (default: its outputs/<ep_id>.<fmt>)."""
    folder = Path(folder)
    manifest = record_folder.read_json(folder / record_folder.MANIFEST)
    if manifest is None:
        raise RenderError(f"{folder} is not a complete recording (no {record_folder.MANIFEST})")
    ep_id = manifest["ep_id"]
    if manifest.get("kind") == FLATLAND_KIND:
        frames = flatland_frames(folder, ep_id, manifest["recorded"]["steps"], manifest["spec"].get("rewards"))
    elif manifest.get("kind") == GYMNASIUM_KIND:
        frames = gymnasium_frames(folder)
    else:
        raise RenderError(f"{folder}: unknown recording kind {manifest.get('kind')!r}")
    try:
        return encode(frames, out or folder / record_folder.OUTPUTS / f"{ep_id}.{fmt}", fmt)
    except VideoError as exc:
        raise RenderError(str(exc)) from None


def flatland_frames(folder: Path, ep_id: str, steps: int, rewards: str | None = None) -> Iterator[np.ndarray]:
    """steps + 1 RGB frames of a recorded flatland episode."""
    from flatland.envs import rewards as flatland_rewards
    from flatland.envs.rail_env_action import RailEnvActions
    from flatland.trajectories.trajectories import Trajectory
    from flatland.utils.rendertools import RenderTool

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trajectory = Trajectory.load_existing(data_dir=Path(folder), ep_id=ep_id)
        env = trajectory.load_env(rewards=getattr(flatland_rewards, rewards)() if rewards else None)
        actions, _, _ = trajectory.build_cache()
        renderer = RenderTool(env, gl="PILSVG")

    def frame() -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            renderer.render_env(show=False, show_observations=False, show_predictions=False, show_rowcols=False)
            return np.asarray(renderer.gl.get_image())

    yield frame()
    n = env.get_num_agents()
    for t in range(steps):
        env.step({h: actions[t].get(h, RailEnvActions.MOVE_FORWARD) for h in range(n)})
        yield frame()


def gymnasium_frames(folder: Path) -> Iterator[np.ndarray]:
    """steps + 1 RGB frames of a recorded gymnasium episode, from the env's ``rgb_array`` render."""
    from env_worker.env_adapter import EnvLoadError
    from env_worker.gymnasium_env import GymnasiumEnv

    header, steps = read_episode(folder)
    try:  # as it was played, with frames: no rgb_array mode, a missing renderer (pygame) is one line
        adapter = GymnasiumEnv(header["env_id"], header["seed"], render_mode="rgb_array")
    except EnvLoadError as exc:
        raise RenderError(f"cannot render {header['env_id']}: {exc}") from None
    try:
        adapter.reset()
        yield _rendered(adapter.env, header["env_id"])
        for row in steps:
            adapter.step(adapter.parse_actions({"actions": row["action"]}))
            yield _rendered(adapter.env, header["env_id"])
    finally:
        adapter.release()


def _rendered(env: Any, env_id: str) -> np.ndarray:
    try:
        frame = env.render()
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise RenderError(f"cannot render {env_id}: {text[0] if text else type(exc).__name__}") from None
    if frame is None:
        raise RenderError(f"{env_id} rendered nothing in rgb_array mode")
    return np.asarray(frame)
