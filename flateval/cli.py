"""The `flateval` command line. Every failure is one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from core import settings as cfg
from core.episode_spec import EpisodeSpec
from env_worker.flatland_test_set import PRESETS as TEST_SET_PRESETS, describe_preset  # stdlib only: cheap
from flateval.stop_signals import StopRequests  # stdlib only


class CliError(click.ClickException):
    """One line for the user; exit code 1."""

    def show(self, file=None) -> None:
        click.echo(f"flateval: {self.message}", err=True)


def _redis_url(url: str | None) -> str:
    url = url or os.environ.get(cfg.REDIS_URL_ENV)
    if not url:
        raise CliError(f"give --redis URL or set {cfg.REDIS_URL_ENV}")
    return url


def _write_json(document: Any, output: str | None) -> None:
    from flateval.results_file import results_json

    text = results_json(document)
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)


LOCAL_EPISODE_ID = ""
"""The episode id of a `flateval episode` (an ad-hoc run: docs/protocol.md, `episode_start`)."""


def _warn(warnings: tuple[str, ...]) -> None:
    for warning in warnings:
        click.echo(f"flateval: warning: {warning}", err=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def redis_option(default: str = "", purpose: str = ""):
    """--redis, with the environment variable that stands for it named in its help (every command)."""
    return click.option("--redis", "redis_url", envvar=cfg.REDIS_URL_ENV, metavar="URL",
                        help=f"Redis URL{purpose}, e.g. redis://:PASSWORD@HOST:6379/0 or, behind Sentinel, "
                             f"redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE_NAME (default: ${cfg.REDIS_URL_ENV}"
                             f"{default}).")


def metrics_host_option(flags: tuple[str, ...] = ("--metrics-host",), envvar: str | None = cfg.METRICS_HOST_ENV):
    """Where /metrics listens: loopback unless asked (0.0.0.0 in a container Prometheus scrapes)."""
    env = f"; env: {envvar}" if envvar else ""
    return click.option(*flags, "metrics_host", envvar=envvar, default=cfg.DEFAULT_METRICS_HOST, show_default=True,
                        help=f"Address /metrics listens on; 0.0.0.0 in a container that Prometheus scrapes{env}.")


class Deadline(click.ParamType):
    """Seconds (a positive number), or ``off``: no such deadline (infinite, which the plan lifts)."""

    name = "SECONDS|off"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, float):
            return value
        if str(value).strip().lower() == "off":
            return math.inf
        try:
            seconds = float(value)
        except ValueError:
            self.fail(f"expected seconds or 'off', got {value!r}", param, ctx)
        if not seconds > 0 or math.isinf(seconds):
            self.fail(f"expected a positive number of seconds or 'off', got {value!r}", param, ctx)
        return seconds


DEADLINE = Deadline()


def challenge_options(command):
    """--challenge, --phase, the time-limit overrides and what to play (--env, --episodes, --seed),
    shared by `run` and `submit`."""
    for option in reversed([
        click.option("--challenge", help="Challenge YAML file or bundled name (default: neurips2020; "
                                         "with --env: gymnasium)."),
        click.option("--phase", help="Phase of the challenge (default: the challenge's default phase)."),
        click.option("--planning-timeout", type=DEADLINE, help="Override: seconds of initial planning, or 'off' "
                                                               "(FAB's behaviour; needs the phase's episode_s)."),
        click.option("--step-timeout", type=DEADLINE, help="Override: seconds per step, or 'off' (FAB's behaviour)."),
        click.option("--overall-timeout", type=float, help="Override: seconds for the whole evaluation."),
        click.option("--env", "env", metavar="gymnasium:ENV_ID",
                     help="Play a Gymnasium env instead of a test set, e.g. gymnasium:CartPole-v1."),
        click.option("--episodes", type=click.IntRange(min=1),
                     help="With a gymnasium env: how many episodes (default: the challenge phase's)."),
        click.option("--seed", type=int, help=f"Env reset seed (default: the challenge's, else "
                                              f"{cfg.DEFAULT_ENV_SEED} for every Flatland env; gymnasium: episode i "
                                              f"gets seed + i, from {cfg.DEFAULT_GYMNASIUM_SEED})."),
        click.option("--record", "record_dir", type=click.Path(file_okay=False), metavar="DIR",
                     help="Record every episode under DIR/<submission id>/<ep_id> (flatland Trajectories; "
                          "docs/audit.md). With submit: a folder every worker sees (a shared volume)."),
    ]):
        command = option(command)
    return command


def sandbox_options(command):
    """--agent-cpus, --agent-memory, --agent-disk, --agent-pids and --no-sandbox, shared by `run` and `worker`."""
    for option in reversed([
        click.option("--agent-cpus", type=click.FloatRange(min=0, min_open=True),
                     help="Cores for each agent: a cpuset of that many and a CPU quota (default: the challenge's)."),
        click.option("--agent-memory", help="Memory for each agent, e.g. 15Gi or 512Mi (default: the challenge's)."),
        click.option("--agent-disk", help="What each agent may write, its home, /tmp, /var/tmp and /dev/shm together, "
                                          "e.g. 2Gi (default: the challenge's, else 2Gi); gone when it stops."),
        click.option("--agent-pids", type=click.IntRange(min=8),
                     help="Processes and threads each agent may have at once (default: 512)."),
        click.option("--no-sandbox", is_flag=True,
                     help="Run agents as plain child processes: flateval's user, network and files, no limits "
                          "(debugging only)."),
        click.option("--agent-image", metavar="IMAGE",
                     help="Run each agent as a container of IMAGE (its own command, or --agent's as the container's "
                          "arguments), fenced as in the cluster; agent_bridge is brought in (docs/participants.md)."),
    ]):
        command = option(command)
    return command


def _refuse_unfenced_image(image: str | None, no_sandbox: bool) -> None:
    if image and no_sandbox:
        raise CliError("--agent-image runs the agent fenced in its container: --no-sandbox does not apply")


def _check_agent_image(image: str | None, no_sandbox: bool, check_image: bool = True) -> None:
    """Before anything starts: an engine, the image on it (unless not `check_image`: not known yet), and
    what flateval brings into it (prepared once per machine); each failure one line."""
    if not image:
        return
    _refuse_unfenced_image(image, no_sandbox)
    from env_worker.container import BridgeDepsError, EngineError, bridge_deps_dir, find_engine

    try:
        engine = find_engine()
        if check_image:
            engine.image(image)
        bridge_deps_dir(log=lambda line: click.echo(f"flateval: {line}", err=True))
    except (EngineError, BridgeDepsError) as exc:
        raise CliError(str(exc)) from None


def _sandbox_spec(cpus: float | None, memory: str | None, pids: int | None, disk: str | None, **rest: Any):
    """The agents' fences from the options (click checked the numbers; a bad size is one line)."""
    from env_worker.sandbox import SandboxSpec

    try:
        return SandboxSpec.from_options(cpus, memory, pids, disk=disk, **rest)
    except ValueError as exc:
        raise CliError(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flateval")
def main() -> None:
    """flateval: evaluate code-upload RL submissions (Flatland, Gymnasium), fast and safely."""


# --------------------------------------------------------------------------------------- episode
@main.command()
@click.option("--env", "env_path", required=True, type=click.Path(dir_okay=False),
              help="A Flatland env .pkl file, or gymnasium:ENV_ID.")
@click.option("--agent-endpoint", required=True, help="Where the agent listens, e.g. tcp://127.0.0.1:8086.")
@click.option("--step-timeout", type=float, default=cfg.DEFAULT_STEP_TIMEOUT_S, show_default=True)
@click.option("--planning-timeout", type=float, default=cfg.DEFAULT_PLANNING_TIMEOUT_S, show_default=True)
@click.option("--seed", type=int, help=f"Env reset seed (default: Flatland {cfg.DEFAULT_ENV_SEED}, "
                                       f"gymnasium {cfg.DEFAULT_GYMNASIUM_SEED}).")
@click.option("--json", "as_json", is_flag=True, help="Print the result record as one JSON object.")
@click.option("--connect-timeout", type=float, default=10.0, show_default=True,
              help="Seconds for the agent to answer the handshake before the episode starts.")
def episode(env_path: str, agent_endpoint: str, step_timeout: float, planning_timeout: float, seed: int | None,
            as_json: bool, connect_timeout: float) -> None:
    """Run one episode against an agent that is already running, and print its result. Exits 1
    unless the episode completed."""
    from core.outcomes import COMPLETED
    from env_worker.agent_link import AgentLink
    from env_worker.agent_process import AgentStartError, wait_for_handshake
    from env_worker.episode import run_episode

    if env_path.startswith(f"{cfg.GYMNASIUM}:"):
        spec = _gymnasium_episode(env_path, seed, planning_timeout, step_timeout)
    else:
        spec = _flatland_episode(Path(env_path), cfg.DEFAULT_ENV_SEED if seed is None else seed, planning_timeout,
                                 step_timeout)
    try:
        wait_for_handshake(agent_endpoint, connect_timeout, last_output=lambda: ": is it running?")
    except AgentStartError as exc:
        raise CliError(str(exc)) from None
    link = AgentLink(agent_endpoint)
    try:
        result = run_episode(spec, link)
        link.deliver_notice(step_timeout)  # a lost episode: the agent (which lives on) learns it now
    finally:
        link.close()
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        click.echo(f"{result.env_file}: {result.outcome}  normalized return {result.normalized_return}  "
                   f"complete {result.percentage_complete}  steps {result.steps}  {result.duration_s:.2f} s")
        if result.error:
            click.echo(f"error: {result.error}")
    if result.outcome != COMPLETED:
        sys.exit(1)


def _flatland_episode(path: Path, seed: int, planning_timeout: float, step_timeout: float) -> EpisodeSpec:
    if not path.is_file():
        raise CliError(f"env file {path} does not exist")
    from broker.test_set import parse_env_file

    env_file = "/".join(path.resolve().parts[-2:])
    test, level = parse_env_file(env_file) or (None, None)
    return EpisodeSpec(env_path=str(path.resolve()), env_file=env_file, test=test, level=level,
                       episode_id=LOCAL_EPISODE_ID, seed=seed, planning_timeout_s=planning_timeout,
                       step_timeout_s=step_timeout, share_env_files=True)  # your own env file: a replica may have it


def _gymnasium_episode(env: str, seed: int | None, planning_timeout: float, step_timeout: float) -> EpisodeSpec:
    """The first episode of a `flateval run --env ENV --seed SEED` (the same seed, the same rules)."""
    from broker.plan import PlanError
    from broker.submit import episode_specs
    from core.challenge import ChallengeError
    from flateval.planning import plan_run

    try:
        plan = plan_run(env=env, episodes=1, seed=seed, planning_timeout_s=planning_timeout,
                        step_timeout_s=step_timeout)
    except (PlanError, ChallengeError) as exc:
        raise CliError(str(exc)) from None
    return replace(episode_specs(LOCAL_EPISODE_ID, plan)[0], episode_id=LOCAL_EPISODE_ID)


# --------------------------------------------------------------------------------------- run
@main.command()
@click.option("--agent", "agent_command", help="Shell command that starts one agent instance (with --agent-image: "
                                              "the container's arguments, e.g. \"python -m agent_bridge.flatland_remote "
                                              "run.py\").")
@click.option("--test-set", type=click.Path(), help="Test set directory (Test_<N>/Level_<M>.pkl or "
                                                    "level_<i>/level_<i>_scenario_<j>.pkl); default: bundled.")
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True,
              help="Worker+agent pairs.")
@redis_option(", else an embedded Redis on a private unix socket")
@click.option("--output", type=click.Path(dir_okay=False),
              help="Write the results JSON here (default: ./flateval-results/<submission id>.json).")
@challenge_options
@click.option("--agent-startup-timeout", type=float, default=60.0, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="Serve the whole local cluster's /metrics here.")
@metrics_host_option(envvar=None)
@click.option("--curve", is_flag=True, help="Encrypt every worker-agent link with CurveZMQ (fresh keys per pair).")
@click.option("--report", "report_file", type=click.Path(dir_okay=False),
              help="Also write the submission's report here: one self-contained HTML page.")
@sandbox_options
def run(agent_command: str, test_set: str | None, workers: int, redis_url: str | None, output: str | None,
        challenge: str | None, phase: str | None, planning_timeout: float | None, step_timeout: float | None,
        overall_timeout: float | None, env: str | None, episodes: int | None, seed: int | None,
        record_dir: str | None, agent_startup_timeout: float, metrics_port: int | None, metrics_host: str,
        curve: bool, report_file: str | None, agent_cpus: float | None, agent_memory: str | None,
        agent_disk: str | None, agent_pids: int | None, no_sandbox: bool, agent_image: str | None) -> None:
    """Evaluate an agent on a test set (or a Gymnasium env) with N worker+agent pairs; print the score.
    The agent is a command (--agent) or a container image (--agent-image)."""
    from broker.plan import PlanError
    from broker.test_set import TestSetError
    from core.challenge import ChallengeError
    from flateval.local_run import RunError, run_local
    from flateval.planning import BUNDLED_TEST_SET, plan_run
    from flateval.progress import ProgressView

    settings = cfg.RunSettings(agent_command=agent_command, test_set=test_set, workers=workers, redis_url=redis_url,
                               output=output, seed=seed, env=env, episodes=episodes, challenge=challenge, phase=phase,
                               planning_timeout_s=planning_timeout, step_timeout_s=step_timeout,
                               overall_timeout_s=overall_timeout, agent_startup_timeout_s=agent_startup_timeout,
                               metrics_port=metrics_port, metrics_host=metrics_host, curve=curve, agent_cpus=agent_cpus, agent_memory=agent_memory,
                               agent_disk=agent_disk, agent_pids=agent_pids, sandbox=not no_sandbox,
                               agent_image=agent_image)
    if not agent_command and not agent_image:
        raise CliError("give the agent: --agent \"CMD\" (a command) or --agent-image IMAGE (a container)")
    if not no_sandbox:
        _sandbox_spec(agent_cpus, agent_memory, agent_pids, agent_disk)  # a bad size is one line before anything starts
    _check_agent_image(agent_image, no_sandbox)
    stops = StopRequests().install()
    try:
        plan = plan_run(challenge=challenge, phase=phase, test_set=test_set, env=env, episodes=episodes, seed=seed,
                        planning_timeout_s=planning_timeout, step_timeout_s=step_timeout,
                        overall_timeout_s=overall_timeout, default_test_set=BUNDLED_TEST_SET, record_dir=record_dir)
        _warn(plan.warnings)
        with ProgressView() as view:
            document = run_local(settings, plan, on_progress=view.update,
                                 on_notice=lambda line: click.echo(line, err=True), hurry=stops.again)
    except RunError as exc:  # failed or stopped: once the submission existed, its results are kept all the same
        if exc.document is not None:
            _deliver(exc.document, output, plan.template.record_dir, report_file, stops)
        raise CliError(str(exc)) from None
    except (TestSetError, ChallengeError, PlanError) as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:  # before the submission existed
        raise CliError("interrupted: nothing was evaluated; everything started was stopped") from None
    _deliver(document, output, plan.template.record_dir, report_file, stops)


def _deliver(document: dict[str, Any], output: str | None, record_dir: str | None, report_file: str | None,
             stops: StopRequests) -> None:
    """Everything a run leaves a person, whatever its status: the score table (when an episode ended),
    the results file, the results beside the recordings, the report."""
    from flateval.progress import print_score

    stops.ignore()  # the results file is the only copy: never cut it short
    if document["episodes"]:
        print_score(document)
    kept = _keep_results(document, output)
    if record_dir and document["episodes"]:
        from flateval.audit_report import save_recorded_results

        click.echo(save_recorded_results(document, record_dir), err=True)
    if report_file:
        _write_report([document], [kept.resolve().parent], report_file)


def _keep_results(document: dict[str, Any], output: str | None) -> Path:
    """Write the results (to --output, else a default file: nothing is lost), then say under the
    score table what went wrong and where the agents' output is. Returns where they are."""
    from flateval.diagnosis import diagnosis
    from flateval.results_file import save_results

    try:
        path, problem = save_results(document, output)
    except OSError as exc:
        raise CliError(f"cannot write the results anywhere: {exc}") from None
    for line in diagnosis(document, path):
        click.echo(line)
    if problem:
        _warn((problem,))
    click.echo(f"results written to {path}", err=True)
    return Path(path)


# --------------------------------------------------------------------------------------- worker
@main.command()
@redis_option()
@click.option("--queue", "queues", multiple=True, envvar="FLATEVAL_QUEUES",
              help="Queue(s) to work, in priority order (env: FLATEVAL_QUEUES, space-separated).")
@click.option("--agent-endpoint", envvar=cfg.AGENT_ENDPOINT_ENV, help="The paired agent's endpoint.")
@click.option("--agent-command", "--agent", "agent_command",
              help="Start (and restart after faults) the agent with this shell command.")
@click.option("--agent-log", type=click.Path(dir_okay=False),
              help="Keep the agent's output in this file (default: a temporary file, removed when the worker "
                   "stops; its tail goes into the results' agent_logs either way).")
@click.option("--agent-pidfile", type=click.Path(dir_okay=False), hidden=True)
@click.option("--name", help="Worker name (default host:pid).")
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
@click.option("--startup-timeout", type=float, default=60.0, show_default=True,
              help="Seconds for the agent (started, or at --agent-endpoint) to answer its handshake before the "
                   "worker takes any episode.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), envvar="FLATEVAL_METRICS_PORT",
              help="Serve this worker's /metrics here.")
@metrics_host_option()
@click.option("--agent-slots", type=click.IntRange(min=1), envvar="FLATEVAL_AGENT_SLOTS",
              help="With an --agent-endpoint holding {slot}: how many agents there are to claim from.")
@click.option("--curve", is_flag=True, help="With --agent-command: encrypt the agent link (CurveZMQ, fresh keys).")
@click.option("--agent-curve-key", envvar=cfg.AGENT_CURVE_KEY_ENV,
              help="The agent's CURVE public key (Z85): talk to it encrypted.")
@click.option("--record", "record_dir", type=click.Path(file_okay=False), metavar="DIR", envvar=cfg.RECORD_DIR_ENV,
              help="Record every episode this worker plays under DIR; also where it sees the record dir "
                   "submissions name (a shared volume). Env: FLATEVAL_RECORD_DIR.")
@sandbox_options
@click.option("--agent-hide", multiple=True, hidden=True, help="A path the started agent must not see.")
@click.option("--agent-cpu-offset", type=click.IntRange(min=0), hidden=True,
              help="Where among this worker's cores the agent's start (default: the least used).")
@click.option("--redis-wait", type=click.FloatRange(min=0), default=0.0, hidden=True,
              help="Seconds Redis may take to answer at start (flateval run starts its own beside its workers).")
def worker(redis_url: str | None, queues: tuple[str, ...], agent_endpoint: str | None, agent_command: str | None,
           agent_log: str | None, agent_pidfile: str | None, name: str | None, burst: bool,
           startup_timeout: float, metrics_port: int | None, metrics_host: str, agent_slots: int | None,
           curve: bool,
           agent_curve_key: str | None, record_dir: str | None, agent_cpus: float | None, agent_memory: str | None,
           agent_disk: str | None, agent_pids: int | None, no_sandbox: bool, agent_image: str | None,
           agent_hide: tuple[str, ...], agent_cpu_offset: int | None, redis_wait: float) -> None:
    """Run an env worker paired with one agent (without --queue: every open submission's queue).

    An agent it starts (--agent-command) is sandboxed with neurips2020's agent resources unless
    --agent-cpus/--agent-memory/--agent-disk say otherwise."""
    from env_worker.sandbox.launcher import LIFELINE_ENV, die_with_parent

    if os.environ.get(LIFELINE_ENV):  # started by `flateval run`: never outlive it, even SIGKILLed
        die_with_parent(int(os.environ.pop(LIFELINE_ENV)))
    queues = tuple(q for item in queues for q in item.split())
    from flateval.planning import BUNDLED_TEST_SET

    _refuse_unfenced_image(agent_image, no_sandbox)
    sandbox = None if no_sandbox or not (agent_command or agent_image) else _sandbox_spec(
        agent_cpus, agent_memory, agent_pids, agent_disk, cpu_offset=agent_cpu_offset,
        hide=(*agent_hide, str(BUNDLED_TEST_SET.parent)))  # every bundled test set
    from core.thread_signals import stop_signals_blocked

    if metrics_port:
        with stop_signals_blocked():  # its server's thread leaves them to ours (core/thread_signals.py)
            _serve_episode_metrics(metrics_host, metrics_port)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the paired agent too, whenever it comes
    agent = None
    try:
        if agent_command or agent_image:  # first: its start-up overlaps the worker's own imports
            if agent_endpoint and "{slot}" in agent_endpoint:
                raise CliError("an --agent-endpoint with {slot} names agents someone else runs: leave it out "
                               "with --agent-command or --agent-image")
            from env_worker.agent_process import AgentStartError
            from env_worker.agent_start import start_agent

            try:
                agent = start_agent(agent_command, agent_image, agent_log, agent_endpoint, sandbox, curve=curve,
                                    pidfile=agent_pidfile, timeout_s=startup_timeout)
            except AgentStartError as exc:
                raise CliError(str(exc)) from None
        with stop_signals_blocked():  # numpy's BLAS threads, started as it loads, leave them to ours
            from env_worker.worker import WorkerStartError, run_worker

        try:
            run_worker(_redis_url(redis_url), list(queues), agent_endpoint=agent_endpoint, agent=agent, name=name,
                       burst=burst, startup_timeout_s=startup_timeout, agent_slots=agent_slots,
                       curve_server_key=agent_curve_key,
                       record_dir=str(Path(record_dir).resolve()) if record_dir else None,
                       metrics_url=_metrics_url(metrics_host, metrics_port) if metrics_port else None,
                       redis_wait_s=redis_wait)
        except WorkerStartError as exc:
            raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        if agent is not None:
            agent.discard()


def _metrics_url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


def _serve_episode_metrics(host: str, port: int) -> None:
    """Multiprocess mode must be chosen before prometheus_client is first imported: a stock
    `rq worker`'s forked horses and this process then write to the same directory."""
    import tempfile

    directory = os.environ.get(cfg.MULTIPROC_ENV)
    if not directory:
        directory = tempfile.mkdtemp(prefix="flateval-metrics-")
        os.environ[cfg.MULTIPROC_ENV] = directory
    from broker.exporter import metrics_registry, serve_metrics

    try:
        serve_metrics(port, metrics_registry(multiprocess_dir=directory), host)
    except OSError as exc:
        raise CliError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None


@main.command()
@redis_option()
@click.option("--port", type=click.IntRange(1, 65535), default=9108, show_default=True)
@metrics_host_option(("--host", "--metrics-host"))
@click.option("--multiproc-dir", type=click.Path(file_okay=False),
              help="Also serve the episode metrics written here by workers (PROMETHEUS_MULTIPROC_DIR).")
def exporter(redis_url: str | None, port: int, metrics_host: str, multiproc_dir: str | None) -> None:
    """Serve Redis-derived metrics (queues, workers, submissions) on /metrics."""
    import threading

    from broker.exporter import metrics_registry, serve_metrics

    conn = _conn(redis_url)
    try:
        serve_metrics(port, metrics_registry(conn, multiproc_dir), metrics_host)
    except OSError as exc:
        raise CliError(f"cannot serve metrics on {metrics_host}:{port}: {exc.strerror or exc}") from None
    click.echo(f"flateval exporter: serving {_metrics_url(metrics_host, port)}", err=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


# --------------------------------------------------------------------------------------- submit & co
@main.command()
@redis_option()
@click.option("--test-set", type=click.Path(), help="Test set directory; default: the challenge's.")
@click.option("--name", help="A name for the submission.")
@challenge_options
def submit(redis_url: str | None, test_set: str | None, name: str | None, challenge: str | None, phase: str | None,
           planning_timeout: float | None, step_timeout: float | None, overall_timeout: float | None,
           env: str | None, episodes: int | None, seed: int | None, record_dir: str | None) -> None:
    """Enqueue a submission for remote workers; print its id."""
    from broker import submit as submitting
    from broker.plan import PlanError
    from broker.test_set import TestSetError
    from core.challenge import ChallengeError
    from flateval.planning import plan_run

    try:
        plan = plan_run(challenge=challenge, phase=phase, test_set=test_set, env=env, episodes=episodes,
                        seed=seed, planning_timeout_s=planning_timeout, step_timeout_s=step_timeout,
                        overall_timeout_s=overall_timeout, record_dir=record_dir)
    except (TestSetError, ChallengeError, PlanError) as exc:
        raise CliError(str(exc)) from None
    _warn(plan.warnings)
    conn = _conn(redis_url)
    sid = submitting.create(conn, plan, name=name)
    submitting.enqueue(conn, sid, plan, submitting.episode_specs(sid, plan))
    click.echo(sid)


def _conn(redis_url: str | None):
    from broker.connection import RedisUnreachable, connect

    try:
        return connect(_redis_url(redis_url))
    except RedisUnreachable as exc:
        raise CliError(str(exc)) from None


@main.command()
@click.argument("submission_id")
@redis_option()
def status(submission_id: str, redis_url: str | None) -> None:
    """Show a submission's status and progress: episodes, running score, timeouts and errors,
    elapsed time, deadline left, and why it stopped or failed."""
    import time

    from broker import store
    from flateval.progress import status_line

    conn = _conn(redis_url)
    record = store.get_submission(conn, submission_id)
    if record is None:
        raise CliError(store.missing_reason(conn, submission_id))
    click.echo(status_line(record, store.get_results(conn, submission_id), time.time()))


@main.command()
@click.argument("submission_id")
@redis_option()
@click.option("--output", type=click.Path(dir_okay=False))
def results(submission_id: str, redis_url: str | None, output: str | None) -> None:
    """Print (or write) a submission's results JSON."""
    from broker import store
    from broker.results import results_document

    conn = _conn(redis_url)
    try:
        document = results_document(conn, submission_id)
    except KeyError:
        raise CliError(store.missing_reason(conn, submission_id)) from None
    _write_json(document, output)


@main.command()
@click.argument("submission_id")
@redis_option()
def cancel(submission_id: str, redis_url: str | None) -> None:
    """Cancel a submission: queued episodes are removed, it gets no score."""
    from broker import store
    from broker.submit import drop_queue

    conn = _conn(redis_url)
    if store.get_submission(conn, submission_id) is None:
        raise CliError(store.missing_reason(conn, submission_id))
    if not store.finalize(conn, submission_id, store.CANCELLED, "cancelled by user"):
        raise CliError(f"submission {submission_id} has already ended")
    dropped = drop_queue(conn, submission_id)
    click.echo(f"{submission_id} cancelled ({dropped} queued episodes removed)")


@main.command()
@click.argument("results_file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["csv", "evalai", "fab"]), required=True,
              help="csv: flatland's results CSV; evalai: EvalAI's result list; fab: test id -> the body of FAB's "
                   "POST /results/submissions/{sid}/tests/{test_id}.")
@click.option("--output", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
@click.option("--split", default=None, help="EvalAI split name (default: the results' phase, else 'test').")
def export(results_file: str, fmt: str, output: str | None, split: str | None) -> None:
    """Export a results JSON as flatland's results CSV, EvalAI's result list or FAB's results bodies."""
    from scoring.export import ExportError, fab_results, to_csv, to_evalai

    document = _read_results_file(results_file)
    try:
        if fmt == "csv":
            text = to_csv(document)
        else:
            exported = fab_results(document) if fmt == "fab" else to_evalai(document, split)
            text = json.dumps(exported, indent=2) + "\n"
    except ExportError as exc:
        raise CliError(f"{results_file}: {exc}") from None
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)


# --------------------------------------------------------------------------------------- audit
@main.command()
@click.argument("target", type=click.Path(exists=False))
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Verify this many episodes at once (processes).")
@click.option("--test-set", type=click.Path(), help="The test set the episodes were played on: every initial state "
              "is checked against its scenario file, and a FAB data dir (<test_id>/<scenario_id>/) re-played from it.")
@click.option("--challenge", help="With a FAB data dir: the challenge whose rewards and reset make each scenario's "
                                  "env (default: ecml2026).")
@click.option("--scenarios", default="ecml2026", show_default=True,
              help="With a FAB data dir: which env file each FAB scenario id (uuid) plays, as fab-worker's --scenarios; "
                   "ids it does not name are the test set's own (level_0_scenario_1).")
def verify(target: str, workers: int, test_set: str | None, challenge: str | None, scenarios: str) -> None:
    """Re-play every recorded episode (DIR, or a RESULTS.json) and check it against its recording and its
    score; with --test-set, against the test set's scenario files too, and a FAB data dir
    (<test_id>/<scenario_id>/event_logs, serialised_state) re-played from them; exits non-zero with one line
    per episode that fails (docs/audit.md)."""
    import sys

    from broker.test_set import TestSetError, discover
    from core.challenge import ChallengeError, load_challenge
    from core.fab_scenarios import FabScenariosError, load_fab_scenarios
    from env_worker.reference_check import EnvRules, is_fab_layout
    from env_worker.verify import VerifyError, targets_from, verify_all, verify_fab, with_references
    from flateval.audit_report import failure_lines, print_verdicts

    try:
        env_files = discover(test_set) if test_set else None
        fab_dir = Path(target).is_dir() and is_fab_layout(Path(target))  # walks the folder: once
        if env_files is not None and fab_dir:
            table = {sid: env_file for tests in load_fab_scenarios(scenarios).tests.values()
                     for sid, env_file in tests.items()}
            verdicts = verify_fab(Path(target), env_files, EnvRules.of(load_challenge(challenge or "ecml2026")),
                                  workers, table)
        else:
            if fab_dir:
                raise CliError(f"{target} is a FAB data dir (<test_id>/<scenario_id>/): give --test-set, the test set "
                               "its scenarios come from")
            targets = targets_from(Path(target))
            unscored = _unscored(target)
            if unscored and not targets:
                raise CliError(f"{target}: {unscored}; no episode finished, nothing to verify")
            if not targets:
                raise CliError(f"no recorded episode under {target} (record with --record DIR)")
            if unscored:
                click.echo(f"flateval: {target}: {unscored}; checking the {len(targets)} episodes that finished",
                           err=True)
            verdicts = verify_all(with_references(targets, env_files) if env_files else targets, workers)
    except (VerifyError, TestSetError, ChallengeError, FabScenariosError) as exc:
        raise CliError(str(exc)) from None
    print_verdicts(verdicts)
    failed = failure_lines(verdicts)
    for line in failed:
        click.echo(f"flateval: {line}", err=True)
    if failed:
        sys.exit(1)


def _unscored(results_file: str) -> str | None:
    """For a results file of a failed or cancelled submission: its status and why it has no score."""
    from scoring.export import no_score

    if not Path(results_file).is_file():
        return None
    document = _read_results_file(results_file)
    reason = no_score(document)
    return None if reason is None else f"a {document.get('status')} submission, no score ({reason})"


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--episodes", "selection", multiple=True, metavar="SELECTION",
              help="Episodes to render: env files (Test_0/Level_1.pkl), without .pkl, ep_ids (Test_0_Level_1) or "
                   "<submission id>/<ep_id>, comma-separated or repeated (default: every recording under DIR).")
@click.option("--format", "fmt", type=click.Choice(["mp4", "gif"]), default="mp4", show_default=True)
def render(directory: str, selection: tuple[str, ...], fmt: str) -> None:
    """Render recorded episodes as videos (one frame for the start, one per step) into each recording's
    outputs/ folder."""
    from core.episode_spec import selects_episode
    from env_worker.record_folder import COMPLETE, find_episodes
    from env_worker.render import RenderError, render_episode

    if not Path(directory).is_dir():
        raise CliError(f"{directory} does not exist")
    chosen = tuple(e.strip() for item in selection for e in item.split(",") if e.strip()) or ("all",)

    def names(entry: str, episode) -> bool:  # also <submission id>/<ep_id>, as `flateval verify` shows them
        return selects_episode((entry,), episode.ep_id) or entry == f"{episode.submission}/{episode.ep_id}"

    found = [f for f in find_episodes(Path(directory)) if f.state == COMPLETE and any(names(e, f) for e in chosen)]
    unknown = [e for e in chosen if not any(names(e, f) for f in found)]
    if unknown or not found:
        raise CliError(f"no complete recording of {', '.join(unknown or chosen)} under {directory}")
    for episode in found:
        try:
            video = render_episode(episode.folder, fmt)
        except RenderError as exc:
            raise CliError(f"{episode.submission}/{episode.ep_id}: {exc}") from None
        if video.note:
            click.echo(f"flateval: {video.note}", err=True)
        click.echo(f"{episode.submission}/{episode.ep_id}: {video.frames} frames -> {video.path}")


@main.command("agent-deps")
def agent_deps() -> None:
    """Prepare what --agent-image brings into every agent container (pyzmq and msgpack for CPython
    3.8-3.13; once per machine, from PyPI, or offline from FLATEVAL_AGENT_WHEELS=DIR) and print its folder."""
    from env_worker.container import BridgeDepsError, bridge_deps_dir

    try:
        click.echo(bridge_deps_dir(log=lambda line: click.echo(f"flateval: {line}", err=True)))
    except BridgeDepsError as exc:
        raise CliError(str(exc)) from None


# --------------------------------------------------------------------------------------- kubernetes
@main.command("k8s-manifests")
@click.argument("submission_id")
@click.argument("agent_image")
@click.option("--namespace", help="Namespace of the objects (default: flateval).")
@click.option("--worker-image", help="The env worker's image (default: flateval/worker at this version).")
@click.option("--challenge", help="Take the agent's cpu/memory and the deadlines from this challenge (default: "
                                  "neurips2020).")
@click.option("--phase", help="Phase of the challenge (default: its default phase).")
@click.option("--cpu", help="Agent CPU (overrides the challenge's).")
@click.option("--memory", help="Agent memory, e.g. 15Gi (overrides the challenge's).")
@click.option("--max-replicas", type=int, default=10, show_default=True)
@click.option("--grace-s", type=int, help="Pod termination grace (default: one worst-case episode under the "
                                          "challenge's deadlines).")
@click.option("--test-set-claim", help="PVC with the test set (default: flateval-test-set); '' if the worker "
                                     "image holds it at /test-set.")
@click.option("--record-claim", help="PVC every episode is recorded into (default: flateval-recordings); '' to "
                                   "record only what the submission asks for.")
@click.option("--image-pull-secret", "image_pull_secrets", multiple=True)
@click.option("--runtime-class", help="Run the pod under this RuntimeClass, e.g. gvisor (deploy/k8s/overlays/gvisor).")
@click.option("--agent-env", "agent_env", multiple=True, metavar="NAME=VALUE",
              help="A variable for the agent container, e.g. OMP_NUM_THREADS=2 (default: the thread variables "
                   "follow its CPU limit).")
def k8s_manifests(submission_id: str, agent_image: str, namespace: str | None, worker_image: str | None,
                  challenge: str | None, phase: str | None, cpu: str | None, memory: str | None, max_replicas: int,
                  grace_s: int | None, test_set_claim: str | None, record_claim: str | None,
                  image_pull_secrets: tuple[str, ...], runtime_class: str | None, agent_env: tuple[str, ...]) -> None:
    """Print one submission's Kubernetes objects (a KEDA ScaledJob): pipe into `kubectl apply -f -`."""
    from broker import k8s_manifests as k8s
    from core.challenge import ChallengeError, load_challenge

    try:
        chosen = load_challenge(challenge).phase(phase)
    except ChallengeError as exc:
        raise CliError(str(exc)) from None
    given = {"namespace": namespace, "worker_image": worker_image}
    if test_set_claim is not None:
        given["test_set_claim"] = test_set_claim or None
    if record_claim is not None:
        given["record_claim"] = record_claim or None
    bad = [item for item in agent_env if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", item)]
    if bad:
        raise CliError(f"--agent-env {bad[0]!r}: expected NAME=VALUE")
    try:
        objects = k8s.submission_manifests(
            submission_id, agent_image, cpu=cpu or f"{chosen.agent_resources.cpu:g}",
            memory=memory or chosen.agent_resources.memory, disk=chosen.agent_resources.disk, max_replicas=max_replicas,
            grace_s=grace_s if grace_s is not None else k8s.episode_bound_s(chosen.time_limits),
            image_pull_secrets=image_pull_secrets, runtime_class=runtime_class,
            agent_env=dict(item.split("=", 1) for item in agent_env),
            **{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise CliError(str(exc)) from None
    click.echo(k8s.to_yaml(objects), nl=False)


def _read_results_file(results_file: str) -> Any:
    try:
        return json.loads(Path(results_file).read_text())
    except OSError as exc:
        raise CliError(f"cannot read {results_file}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f": {exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise CliError(f"{results_file} is not JSON{where}") from None


@main.command("report")
@click.argument("sources", nargs=-1, required=True, metavar="RESULTS.json|SUBMISSION_ID...")
@redis_option(purpose=", to report on submission ids")
@click.option("--output", type=click.Path(dir_okay=False), default="report.html", show_default=True)
def report_command(sources: tuple[str, ...], redis_url: str | None, output: str) -> None:
    """Write one self-contained HTML page about a submission: score, episode grid, plots, details,
    agent logs. Several results files or ids: a leaderboard comparing them, then each one's report."""
    from broker.results import results_document
    from report import ReportError, check_document

    documents, folders, conn = [], [], None
    for source in sources:
        if Path(source).exists() or source.endswith(".json") or "/" in source or os.sep in source:
            document, folder = _read_results_file(source), Path(source).resolve().parent
        else:
            if conn is None:
                if not (redis_url or os.environ.get(cfg.REDIS_URL_ENV)):
                    raise CliError(f"{source} is not a file; for a submission id give --redis URL or set "
                                   f"{cfg.REDIS_URL_ENV}")
                conn = _conn(redis_url)
            try:
                document, folder = results_document(conn, source), Path.cwd()
            except KeyError:
                raise CliError(f"no submission {source}") from None
        try:
            check_document(document)
        except ReportError as exc:
            raise CliError(f"{source}: {exc}") from None
        documents.append(document)
        folders.append(folder)
    _write_report(documents, folders, output)


def _write_report(documents: list[dict[str, Any]], folders: list[Path], output: str) -> None:
    from report import ReportError, write_report

    try:
        write_report(documents, folders, Path(output))
    except ReportError as exc:
        raise CliError(str(exc)) from None
    click.echo(f"report written to {output}", err=True)


# --------------------------------------------------------------------------------------- fab-worker
@main.command("fab-worker")
@click.option("--broker", "broker_url", envvar="BROKER_URL", required=True, metavar="URL",
              help="FAB's Celery broker, e.g. amqps://USER:PASS@HOST:5671// (env: BROKER_URL).")
@click.option("--backend", "backend_url", envvar="BACKEND_URL", metavar="URL",
              help="Celery result backend, as FAB's orchestrator: rpc:// (env: BACKEND_URL).")
@click.option("--benchmark-id", envvar="BENCHMARK_ID", required=True,
              help="The benchmark's id: the task name and the queue FAB sends its submissions to (env: BENCHMARK_ID).")
@click.option("--keyfile", envvar="RABBITMQ_KEYFILE", type=click.Path(dir_okay=False),
              help="TLS client key for the broker (env: RABBITMQ_KEYFILE).")
@click.option("--certfile", envvar="RABBITMQ_CERTFILE", type=click.Path(dir_okay=False),
              help="TLS client certificate (env: RABBITMQ_CERTFILE).")
@click.option("--ca-certs", envvar="RABBITMQ_CA_CERTS", type=click.Path(dir_okay=False),
              help="CA certificates the broker's certificate must chain to (env: RABBITMQ_CA_CERTS).")
@click.option("--fab-api-url", envvar="FAB_API_URL", required=True, help="FAB's backend API (env: FAB_API_URL).")
@click.option("--client-id", envvar="CLIENT_ID", required=True, help="OAuth client id (env: CLIENT_ID).")
@click.option("--token-url", envvar="TOKEN_URL", required=True,
              help="OAuth token endpoint (Keycloak's), client-credentials grant (env: TOKEN_URL).")
@click.option("--test-set", required=True, type=click.Path(file_okay=False, exists=True),
              help="The benchmark's scenario files (e.g. level_<i>/level_<i>_scenario_<j>.pkl).")
@click.option("--scenarios", default="ecml2026", show_default=True,
              help="Which env file each FAB scenario id plays: a bundled table (ecml2026) or a JSON file "
                   "(docs/fab.md).")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False),
              help="Where the recordings go, in FAB's layout: DIR/<submission id>/<test id>/<scenario id>/.")
@click.option("--challenge", help="Challenge YAML file or bundled name (default: ecml2026).")
@click.option("--phase", help="Phase of the challenge.")
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True,
              help="Worker+agent pairs: scenarios evaluated at once.")
@click.option("--agent-command",
              help="Run this local command as every submission's agent instead of its image (a host without a "
                   "container engine; testing).")
@click.option("--percentage-complete-threshold", envvar="PERCENTAGE_COMPLETE_THRESHOLD", type=float,
              help="Stop after a test whose mean completion is under this (env: PERCENTAGE_COMPLETE_THRESHOLD; "
                   "default: the challenge's gate).")
@click.option("--running-time-limit", envvar="RUNNING_TIME_LIMIT", type=float,
              help="Seconds one scenario may run (env: RUNNING_TIME_LIMIT; default: the challenge's).")
@click.option("--total-running-time-limit", envvar="TOTAL_RUNNING_TIME_LIMIT", type=float,
              help="Seconds the whole evaluation may run (env: TOTAL_RUNNING_TIME_LIMIT; default: the challenge's).")
@click.option("--hostname", help="Celery worker name (default: flateval-fab-<pid>@<host>).")
@click.option("--no-sandbox", is_flag=True, help="Run agents as plain child processes (debugging only).")
def fab_worker(broker_url: str, backend_url: str | None, benchmark_id: str, keyfile: str | None,
               certfile: str | None, ca_certs: str | None, fab_api_url: str, client_id: str, token_url: str,
               test_set: str, scenarios: str, data_dir: str, challenge: str | None, phase: str | None, workers: int,
               agent_command: str | None, percentage_complete_threshold: float | None,
               running_time_limit: float | None, total_running_time_limit: float | None, hostname: str | None,
               no_sandbox: bool) -> None:
    """Evaluate the submissions of a flatland-benchmarks (FAB) benchmark queue: FAB's Celery task in,
    FAB's statuses and scores out (docs/fab.md). The OAuth client secret is read from $CLIENT_SECRET."""
    import logging

    from core.challenge import ChallengeError, load_challenge
    from core.fab_scenarios import FabScenariosError, load_fab_scenarios
    from flateval.fab_api import FabApi
    from flateval.fab_orchestrator import DEFAULT_CHALLENGE, FabHost, FabOrchestrator
    from flateval.fab_worker import BrokerSettings, run_worker

    secret = os.environ.get("CLIENT_SECRET")
    if not secret:
        raise CliError("set CLIENT_SECRET (the OAuth client's secret; never on a command line)")
    try:
        table = load_fab_scenarios(scenarios)
        load_challenge(challenge or DEFAULT_CHALLENGE)
    except (FabScenariosError, ChallengeError) as exc:
        raise CliError(str(exc)) from None
    if not agent_command:  # every submission is an image: an engine, before any task is taken
        _check_agent_image("the submissions' images", no_sandbox, check_image=False)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = FabHost(test_set=test_set, scenarios=table, data_dir=str(Path(data_dir).resolve()),
                   challenge=challenge or DEFAULT_CHALLENGE, phase=phase, workers=workers, agent_command=agent_command,
                   percentage_complete_threshold=percentage_complete_threshold,
                   running_time_limit=running_time_limit, total_running_time_limit=total_running_time_limit,
                   sandbox=not no_sandbox)
    broker = BrokerSettings(broker_url=broker_url, benchmark_id=benchmark_id, backend_url=backend_url,
                            keyfile=keyfile, certfile=certfile, ca_certs=ca_certs)
    run_worker(broker, FabOrchestrator(host, FabApi(fab_api_url, client_id, secret, token_url)), hostname=hostname)


# --------------------------------------------------------------------------------------- test sets
@main.command("generate-test-set")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(list(TEST_SET_PRESETS)), default="small", show_default=True,
              help="; ".join(describe_preset(name) for name in TEST_SET_PRESETS) + ".")
@click.option("--seed", type=int, default=42, show_default=True)
def generate_test_set(out: str, preset: str, seed: int) -> None:
    """Write a test set in flatland's evaluator layout (Test_<N>/Level_<M>.pkl: one episode each), with a
    metadata.csv; ecml2026-debug in the ECML 2026 layout (level_<i>/level_<i>_scenario_<j>.pkl, and
    metadata.csv as FAB's definitions have it)."""
    from env_worker.flatland_test_set import generate_test_set as generate

    written = generate(out, preset, seed, progress=lambda name: click.echo(f"  {name}", err=True))
    click.echo(f"{len(written)} envs written to {out}")


if __name__ == "__main__":
    main()
