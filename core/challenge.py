"""Challenge files: every rule of a challenge (phases, time limits, scoring, stop rules) as data.

A challenge is a YAML file validated on load; a bad key or value is one line naming it, e.g.
``challenge my.yaml: phases.round2.scoring.offset: expected a number, got 'one'``. Phases inherit
from the file's ``defaults`` section. The bundled default is ``neurips2020`` (core/challenges/);
``gymnasium`` holds the rules of a run on ``--env gymnasium:ENV_ID`` without a challenge.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from core.settings import (
    AGGREGATIONS,
    DEFAULT_OBSERVATION_BUILDERS,
    DEFAULT_OVERALL_TIMEOUT_S,
    DEFAULT_PLANNING_TIMEOUT_S,
    DEFAULT_STEP_TIMEOUT_S,
    ENVIRONMENTS,
    FLATLAND,
    GYMNASIUM,
)

BUNDLED_DIR = Path(__file__).resolve().parent / "challenges"
NORMALIZATIONS = {FLATLAND: ("seed", "flatland"), GYMNASIUM: ("return",)}
ONLY_FOR = {  # keys that mean something for one environment only
    "test_set": FLATLAND, "reset": FLATLAND, "observation_builders": FLATLAND, "share_env_files": FLATLAND,
    "scoring.rewards": FLATLAND, "stop_rules.completion_gate": FLATLAND,
    "env_id": GYMNASIUM, "scoring.reference_return": GYMNASIUM, "scoring.failed_return": GYMNASIUM,
    "scoring.min_return": GYMNASIUM,
}


class ChallengeError(ValueError):
    """A challenge file that cannot be used; the message is one line naming the bad key."""


@dataclass(frozen=True)
class TimeLimits:
    planning_s: float | None = DEFAULT_PLANNING_TIMEOUT_S  # None: no planning deadline (FAB's behaviour)
    step_s: float | None = DEFAULT_STEP_TIMEOUT_S  # None: no per-step deadline (FAB's behaviour)
    overall_s: float = DEFAULT_OVERALL_TIMEOUT_S
    time_bank_s: float | None = None  # per episode: seconds steps may draw on past step_s (Kaggle's overage)
    episode_s: float | None = None  # per episode: its wall limit from its start (FAB: 30 min per scenario)


@dataclass(frozen=True)
class Scoring:
    offset: float = 0.0
    normalization: str = "seed"  # seed: reward / (max steps x agents); flatland: per-agent capped first;
    # return (gymnasium): the episode's return, scaled so that min_return scores 0 and reference_return 1
    rewards: str = "DefaultRewards"  # a class of flatland.envs.rewards
    aggregation: str = "mean"
    reference_return: float | None = None
    min_return: float | None = None  # the return that scores 0 (None: 0); below reference_return
    failed_return: float | None = None  # a failed gymnasium episode's return (None: what it reached)


@dataclass(frozen=True)
class StopRules:
    max_consecutive_timeouts: int | None = 10
    completion_gate: float | None = None  # stop releasing tests after one whose mean completion is below


@dataclass(frozen=True)
class AgentResources:
    cpu: float = 4.0
    memory: str = "15Gi"
    disk: str = "2Gi"  # what the agent may write: its home, /tmp, /var/tmp and /dev/shm together


VIDEO_FORMATS = ("mp4", "gif")


@dataclass(frozen=True)
class Recording:
    """The challenge's ``recording`` section (docs/audit.md): where every episode is recorded, and
    which episodes are rendered as videos once they end (flatland's ``video_generation_envs``)."""

    dir: str | None = None  # None: only with --record DIR
    videos: tuple[str, ...] = ()  # env files (Test_0/Level_1.pkl), their ep_ids (Test_0_Level_1), or "all"
    video_format: str = "mp4"


@dataclass(frozen=True)
class Phase:
    name: str
    episodes: int | None = None  # None: all; K: the first K in test order (gymnasium: how many to play)
    time_limits: TimeLimits = field(default_factory=TimeLimits)
    scoring: Scoring = field(default_factory=Scoring)
    stop_rules: StopRules = field(default_factory=StopRules)
    observation_builders: tuple[str, ...] = DEFAULT_OBSERVATION_BUILDERS
    share_env_files: bool = False  # a replica agent may be sent the env file (as Flatland always did)
    agent_resources: AgentResources = field(default_factory=AgentResources)


@dataclass(frozen=True)
class Challenge:
    name: str
    environment: str
    test_set: str | None
    default_phase: str
    phases: dict[str, Phase]
    env_id: str | None = None  # gymnasium: what gymnasium.make is given
    seed: int | None = None  # None: flatland's 1001, gymnasium's 0
    reset: bool = True  # flatland: reset each env with the seed; False: play it as saved (FAB's policy runner)
    recording: Recording = field(default_factory=Recording)
    source: str = ""

    def phase(self, name: str | None) -> Phase:
        name = name or self.default_phase
        if name not in self.phases:
            raise ChallengeError(f"challenge {self.name}: no phase {name!r} (phases: {', '.join(self.phases)})")
        return self.phases[name]


# ------------------------------------------------------------------------------------ validation

_SECTIONS = {"time_limits": TimeLimits, "scoring": Scoring, "stop_rules": StopRules,
             "agent_resources": AgentResources}


def _number(value: Any, where: str, *, minimum: float | None = None, maximum: float | None = None,
            positive: bool = False, integer: bool = False, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise ChallengeError(f"{where}: expected {'an integer' if integer else 'a number'}, got {value!r}")
    if positive and value <= 0:
        raise ChallengeError(f"{where}: must be greater than 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise ChallengeError(f"{where}: must be at least {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ChallengeError(f"{where}: must be at most {maximum}, got {value!r}")
    return value if integer else float(value)


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ChallengeError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _mapping(value: Any, where: str, known: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ChallengeError(f"{where}: expected a mapping, got {value!r}")
    for key in value:
        if key not in known:
            raise ChallengeError(f"{where + '.' if where else ''}{key}: unknown key (known: {', '.join(known)})")
    return value


def _only_for(key: str, at: str, environment: str) -> None:
    """Refuse a key that means nothing for this challenge's environment."""
    wanted = ONLY_FOR.get(key, environment)
    if wanted != environment:
        raise ChallengeError(f"{at}: only for environment {wanted} (this challenge's is {environment})")


def _section(kind: type, raw: Any, where: str, base: Any, environment: str) -> Any:
    names = tuple(f.name for f in fields(kind))
    raw = _mapping(raw, where, names)
    section = next(name for name, k in _SECTIONS.items() if k is kind)
    values = {}
    for key, value in raw.items():
        at = f"{where}.{key}"
        _only_for(f"{section}.{key}", at, environment)
        if kind is TimeLimits:
            values[key] = _number(value, at, positive=True, nullable=key != "overall_s")
        elif kind is Scoring:
            if key == "offset":
                values[key] = _number(value, at)
            elif key == "normalization":
                values[key] = _choice(value, at, NORMALIZATIONS[environment])
            elif key == "aggregation":
                values[key] = _choice(value, at, AGGREGATIONS)
            elif key == "reference_return":
                values[key] = _number(value, at, nullable=True)
                if values[key] == 0:
                    raise ChallengeError(f"{at}: must not be 0")
            elif key in ("failed_return", "min_return"):
                values[key] = _number(value, at, nullable=True)
            else:
                values[key] = _rewards_class(value, at)
        elif kind is StopRules:
            if key == "max_consecutive_timeouts":
                values[key] = _number(value, at, integer=True, minimum=1, nullable=True)
            else:
                values[key] = _number(value, at, minimum=0.0, maximum=1.0, nullable=True)
        else:
            values[key] = _number(value, at, positive=True) if key == "cpu" else _memory(value, at)
    return replace(base, **values)


def _check_return_scale(scoring: Scoring, where: str) -> None:
    """Refuse a ``return`` scale that would rank a worse return higher: dividing by a negative
    reference return without a baseline (MountainCar's -110), or a baseline not below the reference."""
    reference, baseline = scoring.reference_return, scoring.min_return
    if baseline is not None and reference is None:
        raise ChallengeError(f"{where}.min_return: needs a reference_return (the return that scores 1)")
    if baseline is not None and baseline >= reference:
        raise ChallengeError(f"{where}.min_return: must be below reference_return ({reference:g}), got {baseline:g}")
    if baseline is None and reference is not None and reference < 0:
        raise ChallengeError(f"{where}.reference_return: {reference:g} is negative, so dividing by it would rank "
                             "a worse return higher; set min_return (the return that scores 0, e.g. the env's worst) "
                             "to score (return - min_return) / (reference_return - min_return)")


REWARDS_MODULE = "flatland.envs.rewards"


def _check_deadlines(limits: TimeLimits, where: str) -> None:
    """Without a planning or a step deadline an agent may wait forever: such a phase needs the
    episode's wall limit (``episode_s``, FAB's per-scenario limit) to end a hung episode."""
    if limits.episode_s is None:
        for key in ("planning_s", "step_s"):
            if getattr(limits, key) is None:
                raise ChallengeError(f"{where}.{key}: no deadline needs episode_s (each episode's wall limit) "
                                     "so that a hung agent costs one episode")
    if limits.time_bank_s is not None and limits.step_s is None:
        raise ChallengeError(f"{where}.time_bank_s: a time bank extends the step deadline, and step_s is null")


def _rewards_class(value: Any, where: str) -> str:
    """A class of flatland.envs.rewards, by its name or as flatland's ``--rewards`` names it
    (``flatland.envs.rewards.ECML2026Rewards``); kept as its name, which every side resolves there."""
    if isinstance(value, str) and value.startswith(REWARDS_MODULE + "."):
        value = value[len(REWARDS_MODULE) + 1:]
    if not isinstance(value, str) or not value.isidentifier():
        raise ChallengeError(f"{where}: expected the name of a flatland rewards class, got {value!r}")
    from flatland.envs import rewards

    if not isinstance(getattr(rewards, value, None), type):
        raise ChallengeError(f"{where}: {REWARDS_MODULE} has no class {value!r}")
    return value


def _memory(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value[:-2].replace(".", "", 1).isdigit() or value[-2:] not in ("Mi", "Gi"):
        raise ChallengeError(f"{where}: expected a size like '15Gi' or '512Mi', got {value!r}")
    return value


def _phase(name: str, raw: Any, where: str, base: Phase, environment: str) -> Phase:
    raw = _mapping(raw if raw is not None else {}, where,
                   ("episodes", "observation_builders", "share_env_files", *(_SECTIONS)))
    phase = replace(base, name=name)
    for key, value in raw.items():
        at = f"{where}.{key}"
        _only_for(key, at, environment)
        if key == "episodes":
            phase = replace(phase, episodes=None if value == "all" else _number(value, at, integer=True, minimum=1))
        elif key == "observation_builders":
            if not isinstance(value, list) or not value:
                raise ChallengeError(f"{at}: expected a non-empty list of builders, got {value!r}")
            builders = tuple(_choice(v, f"{at}[{i}]", DEFAULT_OBSERVATION_BUILDERS) for i, v in enumerate(value))
            phase = replace(phase, observation_builders=builders)
        elif key == "share_env_files":
            if type(value) is not bool:
                raise ChallengeError(f"{at}: expected true or false, got {value!r}")
            phase = replace(phase, share_env_files=value)
        else:
            phase = replace(phase, **{key: _section(_SECTIONS[key], value, at, getattr(phase, key), environment)})
    return phase


def _beside(path: str, base_dir: Path | None) -> str:
    """A path the challenge file names: relative to the file's folder, absolute as it is."""
    return str((base_dir / path).resolve()) if base_dir and not Path(path).is_absolute() else path


def _recording(raw: Any, base_dir: Path | None) -> Recording:
    raw = _mapping(raw if raw is not None else {}, "recording", tuple(f.name for f in fields(Recording)))
    directory = raw.get("dir")
    if directory is not None:
        if not isinstance(directory, str) or not directory:
            raise ChallengeError(f"recording.dir: expected a path, got {directory!r}")
        directory = _beside(directory, base_dir)
    videos = raw.get("videos", [])
    if not isinstance(videos, list) or not all(isinstance(v, str) and v for v in videos):
        raise ChallengeError(f"recording.videos: expected a list of episodes (e.g. Test_0/Level_1.pkl) or [all], "
                             f"got {videos!r}")
    return Recording(dir=directory, videos=tuple(videos),
                     video_format=_choice(raw.get("video_format", "mp4"), "recording.video_format", VIDEO_FORMATS))


def parse_challenge(data: Any, source: str = "<challenge>", base_dir: Path | None = None) -> Challenge:
    try:
        return _parse(data, base_dir)
    except ChallengeError as exc:
        raise ChallengeError(f"challenge {source}: {exc}") from None


def _parse(data: Any, base_dir: Path | None) -> Challenge:
    data = _mapping(data, "", ("name", "environment", "test_set", "env_id", "seed", "reset", "default_phase",
                               "defaults", "phases", "recording"))
    for key in ("name", "phases"):
        if key not in data:
            raise ChallengeError(f"{key}: required")
    name = data["name"]
    if not isinstance(name, str) or not name:
        raise ChallengeError(f"name: expected a non-empty string, got {name!r}")
    environment = _choice(data.get("environment", FLATLAND), "environment", ENVIRONMENTS)
    for key in data:
        _only_for(key, key, environment)
    env_id = data.get("env_id")
    if environment == GYMNASIUM and (not isinstance(env_id, str) or not env_id or env_id.strip() != env_id):
        raise ChallengeError(f"env_id: a gymnasium challenge needs the id of its env (e.g. CartPole-v1), got {env_id!r}")
    seed = None if data.get("seed") is None else _number(data["seed"], "seed", integer=True, minimum=0)
    reset = data.get("reset", True)
    if type(reset) is not bool:
        raise ChallengeError(f"reset: expected true or false, got {reset!r}")
    test_set = data.get("test_set")
    if test_set is not None:
        if not isinstance(test_set, str):
            raise ChallengeError(f"test_set: expected a path, got {test_set!r}")
        test_set = _beside(test_set, base_dir)
    base = Phase(name="defaults", scoring=Scoring(normalization=NORMALIZATIONS[environment][0]))
    defaults = _phase("defaults", data.get("defaults"), "defaults", base, environment)
    phases_raw = data["phases"]
    if not isinstance(phases_raw, Mapping) or not phases_raw:
        raise ChallengeError(f"phases: expected a mapping of phase name to phase, got {phases_raw!r}")
    phases = {str(n): _phase(str(n), raw, f"phases.{n}", defaults, environment) for n, raw in phases_raw.items()}
    for phase in phases.values():
        if environment == GYMNASIUM and phase.episodes is None:
            raise ChallengeError(f"phases.{phase.name}.episodes: a gymnasium challenge needs a number of episodes "
                                 "(here or in defaults)")
        _check_return_scale(phase.scoring, f"phases.{phase.name}.scoring")
        _check_deadlines(phase.time_limits, f"phases.{phase.name}.time_limits")
    default_phase = data.get("default_phase", next(iter(phases)))
    if default_phase not in phases:
        raise ChallengeError(f"default_phase: {default_phase!r} is not one of the phases ({', '.join(phases)})")
    return Challenge(name=name, environment=environment, test_set=test_set, default_phase=default_phase,
                     phases=phases, env_id=env_id, seed=seed, reset=reset,
                     recording=_recording(data.get("recording"), base_dir))


def load_challenge(path_or_name: str | Path | None = None) -> Challenge:
    """A challenge from a YAML file, or a bundled one by name (default: neurips2020)."""
    import yaml  # only here: a worker reads the resource types of this module at its start, never a file

    path = Path(path_or_name) if path_or_name else BUNDLED_DIR / "neurips2020.yaml"
    if not path.exists() and (BUNDLED_DIR / f"{path_or_name}.yaml").exists():
        path = BUNDLED_DIR / f"{path_or_name}.yaml"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ChallengeError(f"challenge {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ChallengeError(f"challenge {path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    challenge = parse_challenge(data, str(path), path.parent)
    return replace(challenge, source=str(path))
