"""The recording observer: every episode a worker plays, written from the authoritative env (docs/audit.md).

An episode is recorded when its submission asks (``--record DIR`` / the challenge's ``recording.dir``:
the spec's ``record_dir``) or when the worker itself records (``flateval worker --record DIR``,
``$FLATEVAL_RECORD_DIR``). The worker's DIR is also where it sees a submission's (shared) record dir,
as ``$FLATEVAL_TEST_SET_DIR`` is for the test set: files go under the worker's DIR, results name them
under the submission's.

* ``env_reset``: a fresh attempt folder, and the env's state right after the reset;
* ``env_stepped``: the recorder appends to memory, nothing else;
* ``episode_ended`` (the episode is over, its score fixed, every deadline past; the job has not
  stored the result yet): the files are written and the attempt committed, the result gets
  ``ep_id``, ``trajectory`` and ``trajectory_digest``; an episode chosen for a video is rendered
  from its recording and the result gets ``video``.

A recording that cannot be written costs the recording, never the episode: one warning line, and the
result has no ``trajectory``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from core.episode_spec import EpisodeSpec, parse_env, selects_episode
from core.settings import GYMNASIUM
from env_worker import record_folder
from env_worker.env_adapter import StepOutcome
from env_worker.flatland_recorder import FlatlandRecorder
from env_worker.gymnasium_recorder import GymnasiumRecorder
from env_worker.observers import EpisodeObserver
from scoring.episode import EpisodeResult

log = logging.getLogger("flateval.recording")

RESULT_FIELDS = ("outcome", "normalized_return", "percentage_complete", "steps", "cumulative_reward", "n_agents",
                 "max_episode_steps", "error")


def recorder_for(folder: Path, adapter: Any, spec: EpisodeSpec) -> Any:
    """The recorder of the episode's env kind."""
    if parse_env(spec.env)[0] == GYMNASIUM:
        return GymnasiumRecorder(folder, adapter, spec)
    return FlatlandRecorder(folder, adapter, spec)


class RecordingObserver(EpisodeObserver):
    def __init__(self, root: str | None = None) -> None:
        self.root = str(Path(root).resolve()) if root else None  # the worker's own (None: what submissions ask)
        self._spec: EpisodeSpec | None = None
        self._recorder: Any = None
        self._attempt: Path | None = None

    def _roots(self, spec: EpisodeSpec) -> tuple[Path, Path] | None:
        """(where this worker writes, what results name), or None when the episode is not recorded."""
        write = self.root or spec.record_dir
        if not write:
            return None
        return Path(write), Path(spec.record_dir or self.root)

    def episode_started(self, spec: EpisodeSpec) -> None:
        self._spec, self._recorder, self._attempt = spec, None, None

    def env_reset(self, env: Any) -> None:
        spec = self._spec
        roots = self._roots(spec) if spec is not None else None
        if roots is None:
            return
        try:
            self._attempt = record_folder.begin_attempt(roots[0], spec.submission_id, spec.ep_id)
            self._recorder = recorder_for(self._attempt, env, spec)
        except Exception as exc:  # a full disk, a read-only mount: the episode goes on unrecorded
            log.warning("flateval: cannot record %s: %s: %s", spec.ep_id, type(exc).__name__, exc)
            self._recorder = None

    def env_stepped(self, seconds: float, actions: Any, outcome: StepOutcome) -> None:
        if self._recorder is not None:
            self._recorder.step(actions, outcome)

    def episode_ended(self, result: EpisodeResult) -> None:
        recorder, spec, attempt = self._recorder, self._spec, self._attempt
        self._recorder = self._attempt = None
        if recorder is None or spec is None or attempt is None:
            return
        write_root, report_root = self._roots(spec)
        try:
            recorded = recorder.finish()
            final, digest = record_folder.commit(attempt, {
                "kind": recorder.kind, "ep_id": spec.ep_id, "submission_id": spec.submission_id,
                "index": spec.index, "env_file": spec.env_file, "env": spec.env, "seed": spec.seed,
                "spec": spec.as_dict(), "recorded": recorded,
                "result": {k: getattr(result, k) for k in RESULT_FIELDS},
                "worker": record_folder.worker_id(), "recorded_at": time.time()})
        except Exception as exc:
            log.warning("flateval: cannot write the recording of %s: %s: %s", spec.ep_id, type(exc).__name__, exc)
            return
        reported = report_root / final.relative_to(write_root)
        result.ep_id, result.trajectory, result.trajectory_digest = spec.ep_id, str(reported), digest
        if spec.videos and selects_episode(spec.videos, spec.env_file):
            result.video = self._render(final, spec, reported)

    @staticmethod
    def _render(final: Path, spec: EpisodeSpec, reported: Path) -> str | None:
        from env_worker.render import RenderError, render_episode

        try:
            video = render_episode(final, spec.video_format)
        except RenderError as exc:
            log.warning("flateval: no video of %s: %s", spec.ep_id, exc)
            return None
        if video.note:
            log.warning("flateval: %s", video.note)
        return str(reported / video.path.relative_to(final))
