"""`flateval verify`: re-play every recorded episode and check it against its recording and its result.

For each complete recording (`env_worker.record_folder`):

1. the files are the ones recorded: each file's sha256 against the manifest, and the whole digest
   against the result's ``trajectory_digest`` when results are given (so rewriting the manifest with
   an edited TSV is caught too; a replay alone misses most single-action edits, because an action
   often changes nothing: a waiting, malfunctioning or mid-cell train);
2. the replay matches the recording at every step: flatland's own `TrajectoryEvaluator` (positions,
   rewards, dones, infos; up to the cut for an episode cut short), or, for Gymnasium, the env re-made,
   reset with the recorded seed and stepped with the recorded actions (rewards, terminations);
3. the result matches the replay: steps, arrivals (percentage complete), cumulative reward, and the
   score re-computed from the replayed rewards under the episode's normalization; for an ended
   Flatland episode also flatland's ``trains_arrived`` row (success rate, normalized reward).

An attempt cut short by a dead worker is reported as incomplete, never as tampered, and never counts
as verified; it fails the check only when its episode has no complete recording.

With the test set (``--test-set``, `env_worker.reference_check`), a recording whose initial state
differs from the test set's scenario file is tampered, and FAB's layout (``<test_id>/<scenario_id>/``)
is verified by re-playing each scenario from the test set's file.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from broker.test_set import EnvFile
from env_worker import reference_check as ref

from core.episode_spec import EpisodeSpec, ep_id_of
from core.outcomes import ENV_ERROR, STOPPED
from env_worker import record_folder as rf
from env_worker.flatland_recorder import KIND as FLATLAND_KIND, trajectory_normalized_reward
from env_worker.gymnasium_recorder import KIND as GYMNASIUM_KIND, read_episode
from scoring.episode import ScoreInputs, episode_score, percentage_complete

VERIFIED, MISMATCH, TAMPERED, INCOMPLETE, SUPERSEDED, MISSING, SKIPPED, ERROR = (
    "verified", "mismatch", "tampered", "incomplete", "superseded", "missing", "skipped", "error")
RESULTS_FILE = "results.json"  # `flateval run --record DIR` writes the results document here, per submission


class VerifyError(ValueError):
    """What to verify cannot be read at all; one line."""


class Mismatch(Exception):
    """The replay or the result disagrees with the recording; the message is one line."""


class StateDiffers(Mismatch):
    """The recorded initial state is not the test set's scenario (tampered); one line."""


@dataclass(frozen=True)
class Target:
    """One episode to verify: its folder, what was found there, and the result it must agree with."""

    episode: str  # <submission>/<ep_id>
    folder: str | None
    state: str  # record_folder's complete / incomplete / superseded / unknown, or "missing"
    claims: dict[str, Any] | None = None  # the episode's result record (None: its manifest's copy)
    detail: str = ""
    reference: EnvFile | None = None  # the test set's scenario its initial state must be (--test-set)


@dataclass
class Verdict:
    episode: str
    status: str
    detail: str = ""
    steps: int | None = None
    arrivals: float | None = None
    trajectory_reward: float | None = None  # flatland's normalized reward (trains_arrived), or the return
    score: float | None = None  # the result's normalized return, as checked
    superseded_by_complete: bool = field(default=False)

    @property
    def failed(self) -> bool:
        if self.status == INCOMPLETE:
            return not self.superseded_by_complete
        return self.status not in (VERIFIED, SUPERSEDED, SKIPPED)


# ------------------------------------------------------------------------------------------- targets

def targets_from(path: Path) -> list[Target]:
    """The episodes of a results JSON, or every recording under a folder; `VerifyError` if neither."""
    path = Path(path)
    if path.is_file():
        return _targets_from_results(path)
    if not path.is_dir():
        raise VerifyError(f"{path} does not exist")
    return _targets_from_dir(path)


def _read_results(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise VerifyError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise VerifyError(f"{path} is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("episodes"), list):
        raise VerifyError(f"{path} is not a flateval results document (no episodes)")
    return document


def _target_of_record(record: dict[str, Any], sid: str, base: Path) -> Target:
    ep_id = record.get("ep_id") or ep_id_of(str(record.get("env_file", "?")))
    label = f"{sid}/{ep_id}"
    if not record.get("trajectory"):
        if record.get("outcome") in (ENV_ERROR, STOPPED):
            return Target(label, None, SKIPPED, record, f"not recorded: {record.get('outcome')} (nothing to replay)")
        return Target(label, None, MISSING, record, "the result names no recording (was the run recorded?)")
    folder = Path(record["trajectory"])
    if not folder.exists():  # results moved with their recordings: look next to them
        folder = next((c for c in (base / ep_id, base / sid / ep_id) if c.exists()), folder)
    if not folder.exists():
        return Target(label, str(folder), MISSING, record, f"its recording {record['trajectory']} does not exist")
    found = next(iter(rf.find_episodes(folder, depth=0)), None)
    return Target(label, str(folder), found.state if found else rf.UNKNOWN, record)


def _targets_from_results(path: Path) -> list[Target]:
    document = _read_results(path)
    sid = str(document.get("submission_id") or path.parent.name)
    return [_target_of_record(r, sid, path.parent) for r in document["episodes"]]


def _targets_from_dir(path: Path) -> list[Target]:
    targets, results, complete = [], {}, set()
    for found in rf.find_episodes(path):
        home = found.folder.parent.parent if found.folder.parent.name == rf.PARTIAL else found.folder.parent
        if home not in results:
            document = _read_results(home / RESULTS_FILE) if (home / RESULTS_FILE).is_file() else None
            results[home] = (document, {r.get("ep_id"): r for r in (document or {}).get("episodes", [])})
        claims = results[home][1].get(found.ep_id) if found.state == rf.COMPLETE else None
        targets.append(Target(f"{found.submission}/{found.ep_id}", str(found.folder), found.state, claims))
        if found.state == rf.COMPLETE:
            complete.add((home, found.ep_id))
    for home, (document, records) in results.items():  # results naming a recording that is not there
        if document is None:
            continue
        sid = str(document.get("submission_id") or home.name)
        for ep_id, record in records.items():
            if record.get("trajectory") and (home, ep_id) not in complete:
                targets.append(_target_of_record(record, sid, home))
    return targets


# ------------------------------------------------------------------------------------------- verdicts

def _each(check: Callable[[Any], "Verdict"], items: Sequence[Any], workers: int) -> list["Verdict"]:
    if workers > 1 and len(items) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
            return list(pool.map(check, items))
    return [check(item) for item in items]


def with_references(targets: Iterable[Target], env_files: Sequence[EnvFile]) -> list[Target]:
    """Each complete recording with the test set's scenario its manifest names (by env file)."""
    by_file = {f.env_file: f for f in env_files}
    out = []
    for target in targets:
        manifest = rf.read_json(Path(target.folder) / rf.MANIFEST) if target.folder else None
        env_file = (manifest or {}).get("env_file")
        out.append(replace(target, reference=by_file.get(env_file)) if env_file in by_file else target)
    return out


def verify_all(targets: Iterable[Target], workers: int = 1) -> list[Verdict]:
    """Verify every target (in `workers` processes); incomplete attempts whose episode has a verified
    recording are marked superseded by it."""
    verdicts = _each(verify_target, list(targets), workers)
    verified = {v.episode for v in verdicts if v.status == VERIFIED}
    for verdict in verdicts:
        if verdict.status == INCOMPLETE and verdict.episode in verified:
            verdict.superseded_by_complete = True
            verdict.detail += "; a complete recording of the episode was verified"
    return verdicts


def verify_target(target: Target) -> Verdict:
    folder = Path(target.folder) if target.folder else None
    if target.state in (MISSING, SKIPPED):
        return Verdict(target.episode, target.state, target.detail)
    if target.state == rf.INCOMPLETE:
        attempt = rf.read_json(folder / rf.ATTEMPT) or {}
        who = f" by {attempt['worker']}" if attempt.get("worker") else ""
        return Verdict(target.episode, INCOMPLETE, f"an attempt{who} that never finished (its worker stopped "
                                                   "mid-episode)")
    if target.state == rf.SUPERSEDED:
        return Verdict(target.episode, SUPERSEDED, "an earlier complete recording, replaced by a re-run")
    if target.state == rf.UNKNOWN:
        return Verdict(target.episode, TAMPERED, f"no {rf.MANIFEST}: not a complete flateval recording")
    verdict = Verdict(target.episode, VERIFIED)
    try:
        manifest = _untampered(folder, target.claims)
    except Mismatch as exc:
        verdict.status, verdict.detail = TAMPERED, str(exc)
        return verdict
    try:
        if target.reference is not None and manifest.get("kind") == FLATLAND_KIND:
            _check_initial_state(folder / ref.SERIALISED_STATE / f"{manifest['ep_id']}.pkl", target.reference,
                                 _rules_of(manifest["spec"]))
    except StateDiffers as exc:
        verdict.status, verdict.detail = TAMPERED, str(exc)
        return verdict
    except Exception as exc:
        verdict.status, verdict.detail = ERROR, f"cannot load its initial state: {type(exc).__name__}: {_first_line(exc)}"
        return verdict
    try:
        replayed = _replay(folder, manifest)
        _check_result(replayed, manifest, target.claims or manifest.get("result") or {}, verdict)
    except Mismatch as exc:
        verdict.status, verdict.detail = MISMATCH, str(exc)
    except Exception as exc:  # an unreadable file, a missing dependency: cannot be verified
        verdict.status, verdict.detail = ERROR, f"cannot replay: {type(exc).__name__}: {_first_line(exc)}"
    return verdict


def _rules_of(spec: dict[str, Any]) -> ref.EnvRules:
    return ref.EnvRules(spec.get("rewards") or "DefaultRewards", bool(spec.get("reset", True)), int(spec["seed"]))


def _check_initial_state(recorded: Path, reference: EnvFile, rules: ref.EnvRules) -> None:
    parts = ref.initial_state_differences(recorded, reference.path, rules)
    if parts:
        raise StateDiffers(ref.differs_line(parts, reference))


# ------------------------------------------------------------------------------- FAB's layout

def verify_fab(root: Path, env_files: Sequence[EnvFile], rules: ref.EnvRules, workers: int = 1,
               table: dict[str, str] | None = None) -> list[Verdict]:
    """Every scenario of a FAB data dir (`ref.fab_scenarios`), re-played from the test set's scenario
    file: its initial state compared, then flatland's `TrajectoryEvaluator` on the reference env with
    the recorded actions (positions, rewards, dones at every step), and FAB's scores re-computed
    (``normalized_reward``: flatland's `Rewards.normalize`; ``percentage_complete``: the arrivals).
    `table` maps FAB's scenario ids (uuids) to the test set's env files (`core.fab_scenarios`)."""
    jobs = [(s, ref.reference_of(s.scenario_id, s.test_id, list(env_files), table), rules)
            for s in ref.fab_scenarios(root)]
    return _each(_verify_fab_scenario, jobs, workers)


def _verify_fab_scenario(job: tuple[ref.FabScenario, EnvFile | None, ref.EnvRules]) -> Verdict:
    scenario, reference, rules = job
    verdict = Verdict(scenario.label, VERIFIED)
    if reference is None:
        verdict.status, verdict.detail = MISSING, f"the test set has no scenario {scenario.scenario_id}"
        return verdict
    try:
        _check_initial_state(scenario.folder / ref.SERIALISED_STATE / f"{scenario.scenario_id}.pkl", reference, rules)
        with ref.replayed_from_reference(scenario, reference, rules) as folder:
            manifest = {"ep_id": scenario.scenario_id, "spec": {"rewards": rules.rewards, "normalization": "flatland"},
                        "recorded": {"steps": ref.recorded_steps(folder, scenario.scenario_id), "done": True}}
            replayed = _replay_flatland(folder, manifest)
    except Mismatch as exc:
        verdict.status, verdict.detail = TAMPERED if isinstance(exc, StateDiffers) else MISMATCH, str(exc)
        return verdict
    except Exception as exc:
        verdict.status, verdict.detail = ERROR, f"cannot replay: {type(exc).__name__}: {_first_line(exc)}"
        return verdict
    verdict.steps, verdict.trajectory_reward = replayed.steps, replayed.trajectory_reward
    verdict.arrivals = percentage_complete(replayed.n_done, replayed.n_agents)
    verdict.score = replayed.trajectory_reward  # FAB's normalized_reward, as its orchestrator posts it
    return verdict


def _untampered(folder: Path, claims: dict[str, Any] | None) -> dict[str, Any]:
    manifest = rf.read_json(folder / rf.MANIFEST)
    if manifest is None or not isinstance(manifest.get("files"), dict):
        raise Mismatch(f"{rf.MANIFEST} is unreadable")
    files, expected = rf.recorded_files(folder), manifest["files"]
    changed = sorted(rel for rel in expected if rel in files and files[rel] != expected[rel])
    missing = sorted(set(expected) - set(files))
    added = sorted(set(files) - set(expected))
    if changed or missing or added:
        parts = [f"{', '.join(changed)} changed"] if changed else []
        parts += [f"{', '.join(missing)} removed"] if missing else []
        parts += [f"{', '.join(added)} added"] if added else []
        raise Mismatch("; ".join(parts) + " since it was recorded")
    digest = rf.digest_of(files)
    if digest != manifest.get("digest"):
        raise Mismatch("the manifest's digest does not match its files")
    claimed = (claims or {}).get("trajectory_digest")
    if claimed and claimed != digest:
        raise Mismatch(f"the files differ from the ones the result recorded (digest {digest[:12]}, "
                       f"result {claimed[:12]})")
    return manifest


@dataclass(frozen=True)
class Replayed:
    steps: int
    n_agents: int
    per_agent: tuple[float, ...]
    n_done: int | None  # None: no notion of arrival (gymnasium)
    max_episode_steps: int | None
    trajectory_reward: float | None  # trains_arrived's normalized reward (ended flatland episodes), or the return


def _replay(folder: Path, manifest: dict[str, Any]) -> Replayed:
    kind = manifest.get("kind")
    if kind == FLATLAND_KIND:
        return _replay_flatland(folder, manifest)
    if kind == GYMNASIUM_KIND:
        return _replay_gymnasium(folder, manifest)
    raise Mismatch(f"unknown recording kind {kind!r}")


def _replay_flatland(folder: Path, manifest: dict[str, Any]) -> Replayed:
    from flatland.callbacks.callbacks import FlatlandCallbacks
    from flatland.envs import rewards as flatland_rewards
    from flatland.envs.step_utils.states import TrainState
    from flatland.evaluators.trajectory_evaluator import TrajectoryEvaluator
    from flatland.trajectories.trajectories import Trajectory

    class LastStep(FlatlandCallbacks):
        step = 0

        def on_episode_step(self, *, env: Any = None, **kwargs: Any) -> None:
            self.step = env._elapsed_steps

    recorded = manifest["recorded"]
    steps, done = int(recorded["steps"]), bool(recorded["done"])
    rewards = getattr(flatland_rewards, manifest["spec"].get("rewards") or "DefaultRewards")()
    tracker = LastStep()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        trajectory = Trajectory.load_existing(data_dir=folder, ep_id=manifest["ep_id"])
        try:
            env = TrajectoryEvaluator(trajectory, callbacks=tracker).evaluate(
                end_step=None if done else steps, tqdm_kwargs={"disable": True}, rewards=rewards)
        except AssertionError as exc:
            raise Mismatch(f"the replay differs from the recording at step {tracker.step}: "
                           f"{_assertion_summary(exc)}") from None
    if env._elapsed_steps != steps or bool(env.dones["__all__"]) != done:
        raise Mismatch(f"the replay {'ends' if env.dones['__all__'] else 'stops'} after {env._elapsed_steps} steps; "
                       f"the recording has {steps} ({'ended' if done else 'cut'})")
    n = env.get_num_agents()
    frame = trajectory.trains_rewards_dones_infos
    sums = frame[frame["episode_id"] == manifest["ep_id"]].groupby("agent_id")["reward"].sum()
    per_agent = tuple(float(sums.get(h, 0.0)) for h in range(n))
    n_done = sum(1 for a in env.agents if a.state == TrainState.DONE)
    trajectory_reward = None
    if done:
        arrived = trajectory.trains_arrived_lookup()
        expected = trajectory_normalized_reward(per_agent, env._max_episode_steps,
                                                manifest["spec"].get("normalization", "seed"))
        trajectory_reward = float(arrived["normalized_reward"])
        if not _close(trajectory_reward, expected):
            raise Mismatch(f"trains_arrived says normalized reward {trajectory_reward}, the replayed rewards give "
                           f"{expected}")
    return Replayed(steps, n, per_agent, n_done, int(env._max_episode_steps), trajectory_reward)


def _replay_gymnasium(folder: Path, manifest: dict[str, Any]) -> Replayed:
    from env_worker.env_adapter import EnvLoadError
    from env_worker.gymnasium_env import GymnasiumEnv

    try:
        header, rows = read_episode(folder)
    except (OSError, ValueError) as exc:
        raise Mismatch(str(exc)) from None
    try:
        env = GymnasiumEnv(header["env_id"], header["seed"])
    except EnvLoadError as exc:
        raise RuntimeError(str(exc)) from None
    try:
        env.reset()
        for i, row in enumerate(rows):
            if i and rows[i - 1]["done"]:
                raise Mismatch(f"the replay ended at step {i}; the recording goes on to step {len(rows)}")
            out = env.step(env.parse_actions({"actions": row["action"]}))
            if not _close(out.rewards[0], row["reward"]) or out.dones[0] != row["terminated"] or out.done != row["done"]:
                raise Mismatch(f"the replay differs from the recording at step {i + 1}: reward {out.rewards[0]}, "
                               f"terminated {out.dones[0]}, done {out.done} replayed; reward {row['reward']}, "
                               f"terminated {row['terminated']}, done {row['done']} recorded")
        totals = env.score_inputs()
    finally:
        env.release()
    done = bool(rows and rows[-1]["done"])
    if done != bool(manifest["recorded"]["done"]) or len(rows) != int(manifest["recorded"]["steps"]):
        raise Mismatch("episode.jsonl and the manifest disagree on the steps recorded")
    return Replayed(len(rows), 1, (totals.cumulative_reward,), None, totals.max_episode_steps,
                    totals.cumulative_reward)


def _check_result(replayed: Replayed, manifest: dict[str, Any], result: dict[str, Any], verdict: Verdict) -> None:
    """The result's steps, arrivals, return and score against the replay's."""
    verdict.steps = replayed.steps
    verdict.trajectory_reward = replayed.trajectory_reward
    verdict.score = result.get("normalized_return")
    total = sum(replayed.per_agent)
    if replayed.n_done is not None:
        verdict.arrivals = percentage_complete(replayed.n_done, replayed.n_agents)
    if result.get("steps") != replayed.steps:
        raise Mismatch(f"the result says {result.get('steps')} steps, the recording has {replayed.steps}")
    if verdict.arrivals is not None and not _close(result.get("percentage_complete"), verdict.arrivals):
        raise Mismatch(f"the result says {result.get('percentage_complete')} of the trains arrived, the replay "
                       f"{verdict.arrivals}")
    if not _close(result.get("cumulative_reward"), total):
        raise Mismatch(f"the result's cumulative reward {result.get('cumulative_reward')} is not the recording's "
                       f"{total}")
    spec = EpisodeSpec.from_dict(manifest["spec"])
    expected = episode_score(result.get("outcome"), ScoreInputs(
        cumulative_reward=total, max_episode_steps=replayed.max_episode_steps, n_agents=replayed.n_agents,
        n_done=replayed.n_done, per_agent_rewards=replayed.per_agent), spec)
    if not _close(verdict.score, expected):
        raise Mismatch(f"the result's score {verdict.score} is not the recording's {expected} "
                       f"({result.get('outcome')}, normalization {spec.normalization}, offset {spec.score_offset})")


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not set(line.strip()) <= {"="}]
    return lines[0] if lines else type(exc).__name__


def _assertion_summary(exc: AssertionError) -> str:
    """flatland's assertion, in one line: which agent, which value, replayed vs recorded."""
    text = str(exc.args[0]) if exc.args else ""
    positions = re.search(r"actual_position:\s*(.+?)\n.*?expected_position:\s*(.+?)\n", text, re.S)
    agent = re.search(r"agent\.handle == (\d+)", text)
    if positions:
        return (f"agent {agent.group(1) if agent else '?'} at {positions.group(1).strip()}, recorded at "
                f"{positions.group(2).strip()}")
    if exc.args and isinstance(exc.args[0], tuple) and len(exc.args[0]) == 4:
        _, handle, actual, expected = exc.args[0]
        what = "info" if isinstance(actual, dict) else "done" if isinstance(actual, bool) else "reward"
        return f"agent {handle}'s {what} is {actual!r}, recorded {expected!r}"
    return _first_line(exc) if text else "the arrivals differ from trains_arrived"
