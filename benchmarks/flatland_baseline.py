"""Baseline: what flatland-rl's own evaluator costs, next to stepping the same envs directly.

Two measurements over one test set in flatland's layout (``Test_<N>/Level_<M>.pkl`` + metadata.csv):

* `direct_step_seconds`: the floor, every env loaded and reset exactly as flatland's service does
  it, then stepped in-process with empty action dicts; only the stepping loops are timed.
* `run_flatland_evaluator`: flatland's ``FlatlandRemoteEvaluationService`` in a subprocess on a
  real Redis, driven from this process by ``FlatlandRemoteClient`` with the same do-nothing policy.

Note on what the service-side figure measures: ``FlatlandRemoteClient.env_step`` does not wait for
the service; it pushes the action to Redis and steps its own local copy of the env, while the service
steps its copy concurrently. Only ``env_create`` is a round trip, and it waits for the service to
drain the previous episode's steps. Wall time therefore includes, per episode, the service's
load + reset and the client's own load + reset (reported separately as ``create_s``).

Run as a script: ``python benchmarks/flatland_baseline.py [--test-set DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

# The seed flatland's service resets every env with (its FLATLAND_EVALUATION_RANDOM_SEED default).
FLATLAND_SEED = 1001
# flatland's service adds +1.0 to an episode's normalized reward when it ends (so scores sum up).
SERVICE_NORMALIZED_OFFSET = 1.0
SERVICE_ID = "flateval-baseline"
MATCH_TOLERANCE = 1e-9

# Environment for the service process. Its settings are module-level constants read at import time,
# so they must be in the environment of the process that imports it. Everything is flatland's default
# except TEST_MIN_PERCENTAGE_COMPLETE_MEAN: by default the service stops the evaluation after any test
# whose mean fraction of arrived trains is below 0.25, which a do-nothing policy (0 trains arrive)
# always is, so only Test_0 would run.
SERVICE_ENV = {
    "TEST_MIN_PERCENTAGE_COMPLETE_MEAN": "0",
    "FLATLAND_EVALUATION_RANDOM_SEED": str(FLATLAND_SEED),
}
_SERVICE_SCRIPT = """
import sys
from flatland.evaluators.service import FlatlandRemoteEvaluationService
folder, port, service_id, results = sys.argv[1:]
FlatlandRemoteEvaluationService(
    test_env_folder=folder, flatland_rl_service_id=service_id, remote_host="127.0.0.1",
    remote_port=int(port), visualize=False, verbose=False, result_output_path=results,
).run()
"""


def env_files(test_set: Path) -> list[str]:
    """Env files relative to `test_set`, in the order flatland's service plays them (test, then level)."""
    def order(rel: str) -> tuple[int, int]:
        test, level = map(int, re.findall(r"\d+", rel))
        return test, level

    return sorted((p.relative_to(test_set).as_posix() for p in Path(test_set).glob("*/*.pkl")), key=order)


def direct_step_seconds(test_set: Path, seed: int = FLATLAND_SEED) -> dict:
    """Step every env in-process with empty action dicts: the cost floor any evaluator adds to.

    Each episode also reports its own `load_s` (load + reset) and `step_s` (the stepping loop)."""
    from flatland.envs.persistence import RailEnvPersister

    episodes, total_steps, total_s = [], 0, 0.0
    for rel in env_files(Path(test_set)):
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env, _ = RailEnvPersister.load_new(str(Path(test_set) / rel))
            env.reset(regenerate_rail=True, regenerate_schedule=True, random_seed=seed)
        load_s = time.perf_counter() - started
        seconds, steps, cum_reward = _step_until_done(env)
        total_steps += steps
        total_s += seconds
        episodes.append({"env_file": rel, "steps": steps, "load_s": load_s, "step_s": seconds,
                         "n_agents": env.get_num_agents(), "width": env.width, "height": env.height,
                         "normalized_return": cum_reward / (env._max_episode_steps * env.get_num_agents())})
    return {"steps": total_steps, "step_s": total_s, "per_step_s": total_s / max(total_steps, 1),
            "episodes": episodes}


def _step_until_done(env) -> tuple[float, int, float]:
    """(seconds, steps, summed reward) of one do-nothing episode; only this loop is timed."""
    steps, cum_reward, done = 0, 0.0, {"__all__": False}
    start = time.perf_counter()
    while not done["__all__"]:
        _, rewards, done, _ = env.step({})
        cum_reward += sum(rewards.values())
        steps += 1
    return time.perf_counter() - start, steps, cum_reward


def free_port() -> int:
    """A loopback TCP port that is free right now (for the baseline's own Redis)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_flatland_evaluator(test_set: Path, redis_port: int, *, timeout_s: float = 600) -> dict:
    """Run flatland's own service + client end to end with a do-nothing policy and time it.

    Returns {"wall_s", "create_s", "steps", "episodes", "summary", "log_tail"}: `wall_s` runs from
    the first env_create to the last env_step's return (process start-up excluded), `create_s` is
    the part spent in env_create. Each episode is {"env_file", "steps", "normalized_reward" (as the
    service reports it, +1.0 included), "normalized_return" (that minus the +1.0, comparable with
    `direct_step_seconds`)}, read from the results CSV the service writes. `summary` is the
    service's answer to submit(). After `timeout_s` in all, or if the service dies, Redis is stopped
    under the client and a RuntimeError is raised with the tail of the service's log.
    """
    import redis

    test_set = Path(test_set).resolve()
    workdir = Path(tempfile.mkdtemp(prefix="flatland-baseline-"))
    results, log = workdir / "results.csv", workdir / "service.log"
    server = start_redis_for_flatland(redis_port)
    service, watchdog, finishing = None, None, threading.Event()
    try:
        service = _start_service(test_set, redis_port, results, log)
        watchdog = threading.Thread(target=_watch, args=(service, server, timeout_s, finishing), daemon=True)
        watchdog.start()
        run = _drive_client(test_set, redis_port, finishing)
        service.wait(timeout_s)  # it returns from run() right after answering submit
        return {**run, "episodes": _service_episodes(results), "log_tail": _tail(log)}
    except (redis.ConnectionError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"flatland's service died or overran {timeout_s:g} s: {exc}\n{_tail(log)}") from exc
    finally:
        finishing.set()
        _stop(service)
        if watchdog:
            watchdog.join()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def run_flatland_script(test_set: Path, script: list[str], redis_port: int, *, service_env: dict | None = None,
                        client_env: dict | None = None, timeout_s: float = 600) -> dict:
    """flatland's own service + a participant's FlatlandRemoteClient script (``python SCRIPT ARGS``),
    end to end, as flatland's evaluation ran them: the script finds the service through the
    variables flatland's client reads (AICROWD_SUBMISSION_ID, redis_ip, AICROWD_TESTS_FOLDER), plus
    REDIS_PORT for scripts that take the port from it (flatland's client defaults to 6379).

    Returns {"wall_s" (both launched -> the script exited), "episodes" (the service's results CSV,
    as in `run_flatland_evaluator`), "returncode", "output" (the script's stdout and stderr),
    "log_tail" (the service's)}. `service_env` sets the service's limits, e.g.
    {"FLATLAND_PER_STEP_TIMEOUT": "1"} (whole seconds: flatland reads them with int()).
    """
    test_set = Path(test_set).resolve()
    workdir = Path(tempfile.mkdtemp(prefix="flatland-script-"))
    results, log = workdir / "results.csv", workdir / "service.log"
    server = start_redis_for_flatland(redis_port)
    service, finishing = None, threading.Event()
    try:
        started = time.perf_counter()
        service = _start_service(test_set, redis_port, results, log, service_env)
        watchdog = threading.Thread(target=_watch, args=(service, server, timeout_s, finishing), daemon=True)
        watchdog.start()
        env = {**os.environ, "AICROWD_SUBMISSION_ID": SERVICE_ID, "redis_ip": "127.0.0.1",
               "AICROWD_TESTS_FOLDER": str(test_set), "REDIS_PORT": str(redis_port), **(client_env or {})}
        client = subprocess.run([sys.executable, *script], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=timeout_s)
        finishing.set()
        service.wait(timeout_s)
        wall = time.perf_counter() - started
        return {"wall_s": wall, "episodes": _service_episodes(results) if results.exists() else [],
                "returncode": client.returncode, "output": client.stdout + client.stderr, "log_tail": _tail(log)}
    finally:
        finishing.set()
        _stop(service)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def start_redis_for_flatland(port: int):
    from broker.embedded_redis import start_redis

    return start_redis(port=port)


def _start_service(test_set: Path, port: int, results: Path, log: Path,
                   extra_env: dict | None = None) -> subprocess.Popen:
    """flatland's service in its own interpreter, its prints going to `log`."""
    env = {**os.environ, **SERVICE_ENV, **(extra_env or {})}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", _SERVICE_SCRIPT, str(test_set), str(port), SERVICE_ID, str(results)],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def _watch(service: subprocess.Popen, server, timeout_s: float, finishing: threading.Event) -> None:
    """Stop Redis (which unblocks the client) if the service dies early or the run overruns.

    The client blocks on Redis pops without a timeout, so this is what bounds the run.
    """
    try:
        service.wait(timeout_s)
        if finishing.is_set():  # exited after submit, as it should
            return
    except subprocess.TimeoutExpired:
        pass
    server.stop()


def _drive_client(test_set: Path, port: int, finishing: threading.Event) -> dict:
    """Play every episode the service hands out with empty action dicts, then submit."""
    from flatland.core.env_observation_builder import DummyObservationBuilder
    from flatland.evaluators.client import FlatlandRemoteClient

    client = FlatlandRemoteClient(test_env_folder=str(test_set), flatland_rl_service_id=SERVICE_ID,
                                  remote_host="127.0.0.1", remote_port=port)
    builder = DummyObservationBuilder()
    steps, create_s, first, last = 0, 0.0, None, None
    while True:
        started = time.perf_counter()
        first = first or started
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            observation, _ = client.env_create(obs_builder_object=builder)
        if not observation:  # the service has no env left
            break
        create_s += time.perf_counter() - started
        done = {"__all__": False}
        while not done["__all__"]:
            _, _, done, _ = client.env_step({})
            steps += 1
        last = time.perf_counter()
    finishing.set()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = client.submit()
    return {"wall_s": (last or first) - first, "create_s": create_s, "steps": steps,
            "summary": {key: float(value) for key, value in summary.items()}}


def _service_episodes(results: Path) -> list[dict]:
    """Per-episode figures from the results CSV the service writes (episodes it actually played)."""
    episodes = []
    with open(results, newline="") as fh:
        for row in csv.DictReader(fh):
            if not row["normalized_reward"]:  # pandas writes the NaN of an unplayed env as ""
                continue
            reported = float(row["normalized_reward"])
            episodes.append({"env_file": row["filename"], "steps": int(float(row["steps"])),
                             "normalized_reward": reported,
                             "normalized_return": reported - SERVICE_NORMALIZED_OFFSET,
                             "percentage_complete": float(row["percentage_complete"] or 0.0)})
    return episodes


def _stop(process: subprocess.Popen | None) -> None:
    """Stop a child we started, by its pid: terminate, then kill if it lingers."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def return_mismatches(direct: list[dict], service: list[dict], tolerance: float = MATCH_TOLERANCE) -> list[str]:
    """Episodes whose do-nothing normalized return differs between direct stepping and flatland's service."""
    by_file = {episode["env_file"]: episode["normalized_return"] for episode in service}
    problems = [f"{episode['env_file']}: not played by the service" for episode in direct
                if episode["env_file"] not in by_file]
    problems += [f"{episode['env_file']}: direct {episode['normalized_return']!r} "
                 f"vs service {by_file[episode['env_file']]!r}"
                 for episode in direct if episode["env_file"] in by_file
                 and abs(episode["normalized_return"] - by_file[episode["env_file"]]) > tolerance]
    return problems


def main(argv: list[str] | None = None) -> int:
    """Print direct vs flatland-evaluator timings for one test set; exit 1 if returns disagree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-set", type=Path, help="test set directory (default: generate 'medium')")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the evaluator run, seconds")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flatland-baseline-set-") as scratch:
        test_set = args.test_set or _generated(Path(scratch))
        direct = direct_step_seconds(test_set)
        flatland = run_flatland_evaluator(test_set, free_port(), timeout_s=args.timeout)
    _report(direct, flatland)
    mismatches = return_mismatches(direct["episodes"], flatland["episodes"])
    if flatland["steps"] != direct["steps"]:
        mismatches.append(f"total steps: direct {direct['steps']} vs flatland {flatland['steps']}")
    print(f"do-nothing normalized returns (flatland's minus its +{SERVICE_NORMALIZED_OFFSET}) match direct "
          f"within {MATCH_TOLERANCE:g}: {not mismatches}")
    for line in mismatches:
        print(f"MISMATCH {line}")
    return 1 if mismatches else 0


def _generated(scratch: Path) -> Path:
    from env_worker.flatland_test_set import generate_test_set

    generate_test_set(scratch / "medium", "medium")
    return scratch / "medium"


def _report(direct: dict, flatland: dict) -> None:
    steps = direct["steps"]
    ms_per_step = 1e3 / max(steps, 1)
    overhead_s = flatland["wall_s"] - direct["step_s"]
    print(f"episodes: {len(direct['episodes'])}, steps: {steps}")
    print(f"direct stepping: {direct['step_s']:.3f} s, {1e3 * direct['per_step_s']:.3f} ms/step")
    print(f"flatland evaluator wall: {flatland['wall_s']:.3f} s (of which env_create {flatland['create_s']:.3f} s), "
          f"{ms_per_step * flatland['wall_s']:.3f} ms/step")
    print(f"flatland overhead over direct stepping: {ms_per_step * overhead_s:.3f} ms/step "
          f"({ms_per_step * (overhead_s - flatland['create_s']):.3f} without env_create)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find broker/, env_worker/
    sys.exit(main())
