"""The `flateval` command line. Every failure is one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import click

from flateval import settings as cfg


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
    text = json.dumps(document, indent=2, default=str)
    if output:
        Path(output).write_text(text + "\n")
    else:
        click.echo(text)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def challenge_options(command):
    """--challenge, --phase, the time-limit overrides and what to play (--env, --episodes, --seed),
    shared by `run` and `submit`."""
    for option in reversed([
        click.option("--challenge", help="Challenge YAML file or bundled name (default: neurips2020; "
                                         "with --env: gymnasium)."),
        click.option("--phase", help="Phase of the challenge (default: the challenge's default phase)."),
        click.option("--planning-timeout", type=float, help="Override: seconds of initial planning."),
        click.option("--step-timeout", type=float, help="Override: seconds per step."),
        click.option("--overall-timeout", type=float, help="Override: seconds for the whole evaluation."),
        click.option("--env", "env", metavar="gymnasium:ENV_ID",
                     help="Play a Gymnasium env instead of a test set, e.g. gymnasium:CartPole-v1."),
        click.option("--episodes", type=click.IntRange(min=1),
                     help="With a gymnasium env: how many episodes (default: the challenge phase's)."),
        click.option("--seed", type=int, help=f"Env reset seed (default: the challenge's, else "
                                              f"{cfg.DEFAULT_ENV_SEED} for every Flatland env; gymnasium: episode i "
                                              f"gets seed + i, from {cfg.DEFAULT_GYMNASIUM_SEED})."),
    ]):
        command = option(command)
    return command


def sandbox_options(command):
    """--agent-cpus, --agent-memory, --agent-pids and --no-sandbox, shared by `run` and `worker`."""
    for option in reversed([
        click.option("--agent-cpus", type=click.FloatRange(min=0, min_open=True),
                     help="Cores for each agent: a cpuset of that many and a CPU quota (default: the challenge's)."),
        click.option("--agent-memory", help="Memory for each agent, e.g. 15Gi or 512Mi (default: the challenge's)."),
        click.option("--agent-pids", type=click.IntRange(min=8),
                     help="Processes and threads each agent may have at once (default: 512)."),
        click.option("--no-sandbox", is_flag=True,
                     help="Run agents as plain child processes: flateval's user, network and files, no limits "
                          "(debugging only)."),
    ]):
        command = option(command)
    return command


def _sandbox_spec(cpus: float | None, memory: str | None, pids: int | None, **rest: Any):
    """The agents' fences from the options (click checked the numbers; the size is one line if bad)."""
    from env_worker.sandbox import SandboxSpec

    try:
        return SandboxSpec.from_options(cpus, memory, pids, **rest)
    except ValueError as exc:
        raise CliError(f"--agent-memory: {exc}") from None


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
def episode(env_path: str, agent_endpoint: str, step_timeout: float, planning_timeout: float, seed: int | None,
            as_json: bool) -> None:
    """Run one episode against an agent that is already running, and print its result."""
    from env_worker.agent_link import AgentLink
    from env_worker.episode import run_episode

    if env_path.startswith(f"{cfg.GYMNASIUM}:"):
        spec = _gymnasium_episode(env_path, seed, planning_timeout, step_timeout)
    else:
        spec = _flatland_episode(Path(env_path), cfg.DEFAULT_ENV_SEED if seed is None else seed, planning_timeout,
                                 step_timeout)
    link = AgentLink(agent_endpoint)
    try:
        result = run_episode(spec, link)
    finally:
        link.close()
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    click.echo(f"{result.env_file}: {result.outcome}  normalized return {result.normalized_return}  "
               f"complete {result.percentage_complete}  steps {result.steps}  {result.duration_s:.2f} s")
    if result.error:
        click.echo(f"error: {result.error}")


def _flatland_episode(path: Path, seed: int, planning_timeout: float, step_timeout: float) -> cfg.EpisodeSpec:
    if not path.is_file():
        raise CliError(f"env file {path} does not exist")
    parts = path.resolve().parts
    env_file = "/".join(parts[-2:])
    test = level = None
    if parts[-2].startswith("Test_") and parts[-1].startswith("Level_"):
        try:
            test, level = int(parts[-2][5:]), int(parts[-1][6:].split(".")[0])
        except ValueError:
            pass
    return cfg.EpisodeSpec(env_path=str(path.resolve()), env_file=env_file, test=test, level=level,
                           episode_id="local", seed=seed, planning_timeout_s=planning_timeout,
                           step_timeout_s=step_timeout)


def _gymnasium_episode(env: str, seed: int | None, planning_timeout: float, step_timeout: float) -> cfg.EpisodeSpec:
    """The first episode of a `flateval run --env ENV --seed SEED` (the same seed, the same rules)."""
    from broker.plan import PlanError, plan_submission
    from broker.submit import episode_specs
    from flateval.challenge import ChallengeError

    try:
        plan = plan_submission(env=env, episodes=1, seed=seed, planning_timeout_s=planning_timeout,
                               step_timeout_s=step_timeout)
    except (PlanError, ChallengeError) as exc:
        raise CliError(str(exc)) from None
    return episode_specs("local", plan)[0]


# --------------------------------------------------------------------------------------- run
@main.command()
@click.option("--agent", "agent_command", required=True, help="Shell command that starts one agent instance.")
@click.option("--test-set", type=click.Path(), help="Test set directory (Test_<N>/Level_<M>.pkl); default: bundled.")
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True,
              help="Worker+agent pairs.")
@click.option("--redis", "redis_url", envvar=cfg.REDIS_URL_ENV, help="Redis URL; default: an embedded Redis.")
@click.option("--output", type=click.Path(dir_okay=False), help="Write the results JSON here.")
@challenge_options
@click.option("--agent-startup-timeout", type=float, default=60.0, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="Serve the whole local cluster's /metrics here.")
@click.option("--curve", is_flag=True, help="Encrypt every worker-agent link with CurveZMQ (fresh keys per pair).")
@sandbox_options
def run(agent_command: str, test_set: str | None, workers: int, redis_url: str | None, output: str | None,
        challenge: str | None, phase: str | None, planning_timeout: float | None, step_timeout: float | None,
        overall_timeout: float | None, env: str | None, episodes: int | None, seed: int | None,
        agent_startup_timeout: float, metrics_port: int | None, curve: bool, agent_cpus: float | None,
        agent_memory: str | None, agent_pids: int | None, no_sandbox: bool) -> None:
    """Evaluate an agent on a test set (or a Gymnasium env) with N worker+agent pairs; print the score."""
    from broker.local_run import RunError, run_local
    from broker.plan import PlanError
    from broker.test_set import TestSetError
    from flateval.challenge import ChallengeError
    from flateval.progress import ProgressView, print_score

    settings = cfg.RunSettings(agent_command=agent_command, test_set=test_set, workers=workers, redis_url=redis_url,
                               output=output, seed=seed, env=env, episodes=episodes, challenge=challenge, phase=phase,
                               planning_timeout_s=planning_timeout, step_timeout_s=step_timeout,
                               overall_timeout_s=overall_timeout, agent_startup_timeout_s=agent_startup_timeout,
                               metrics_port=metrics_port, curve=curve, agent_cpus=agent_cpus, agent_memory=agent_memory,
                               agent_pids=agent_pids, sandbox=not no_sandbox)
    if not no_sandbox:
        _sandbox_spec(agent_cpus, agent_memory, agent_pids)  # a bad size is one line before anything starts
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with ProgressView() as view:
            document = run_local(settings, on_progress=view.update, on_notice=lambda line: click.echo(line, err=True))
    except (RunError, TestSetError, ChallengeError, PlanError) as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        raise CliError("interrupted: the submission is cancelled and everything started was stopped") from None
    print_score(document)
    if output:
        _write_json(document, output)
        click.echo(f"results written to {output}", err=True)


# --------------------------------------------------------------------------------------- worker
@main.command()
@click.option("--redis", "redis_url", envvar=cfg.REDIS_URL_ENV, help="Redis URL.")
@click.option("--queue", "queues", multiple=True, envvar="FLATEVAL_QUEUES",
              help="Queue(s) to work, in priority order (env: FLATEVAL_QUEUES, space-separated).")
@click.option("--agent-endpoint", envvar=cfg.AGENT_ENDPOINT_ENV, help="The paired agent's endpoint.")
@click.option("--agent-command", help="Start (and restart after faults) the agent with this shell command.")
@click.option("--agent-log", type=click.Path(dir_okay=False), help="Where the agent's output goes.")
@click.option("--agent-pidfile", type=click.Path(dir_okay=False), hidden=True)
@click.option("--name", help="Worker name (default host:pid).")
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
@click.option("--startup-timeout", type=float, default=60.0, show_default=True,
              help="Seconds for the agent (started, or at --agent-endpoint) to answer its handshake before the "
                   "worker takes any episode.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), envvar="FLATEVAL_METRICS_PORT",
              help="Serve this worker's /metrics here.")
@click.option("--agent-slots", type=click.IntRange(min=1), envvar="FLATEVAL_AGENT_SLOTS",
              help="With an --agent-endpoint holding {slot}: how many agents there are to claim from.")
@click.option("--curve", is_flag=True, help="With --agent-command: encrypt the agent link (CurveZMQ, fresh keys).")
@click.option("--agent-curve-key", envvar=cfg.AGENT_CURVE_KEY_ENV,
              help="The agent's CURVE public key (Z85): talk to it encrypted.")
@sandbox_options
@click.option("--agent-hide", multiple=True, hidden=True, help="A path the started agent must not see.")
@click.option("--agent-cpu-offset", type=click.IntRange(min=0), hidden=True,
              help="Where among this worker's cores the agent's start (default: the least used).")
def worker(redis_url: str | None, queues: tuple[str, ...], agent_endpoint: str | None, agent_command: str | None,
           agent_log: str | None, agent_pidfile: str | None, name: str | None, burst: bool,
           startup_timeout: float, metrics_port: int | None, agent_slots: int | None, curve: bool,
           agent_curve_key: str | None, agent_cpus: float | None, agent_memory: str | None, agent_pids: int | None,
           no_sandbox: bool, agent_hide: tuple[str, ...], agent_cpu_offset: int | None) -> None:
    """Run an env worker paired with one agent (without --queue: every open submission's queue).

    An agent it starts (--agent-command) is sandboxed with neurips2020's agent resources unless
    --agent-cpus/--agent-memory say otherwise."""
    from env_worker.sandbox.launcher import LIFELINE_ENV, die_with_parent

    if os.environ.get(LIFELINE_ENV):  # started by `flateval run`: never outlive it, even SIGKILLed
        die_with_parent(int(os.environ.pop(LIFELINE_ENV)))
    queues = tuple(q for item in queues for q in item.split())
    sandbox = None if no_sandbox or not agent_command else _sandbox_spec(
        agent_cpus, agent_memory, agent_pids, cpu_offset=agent_cpu_offset, hide=agent_hide)
    if metrics_port:
        _serve_episode_metrics(metrics_port)
    from env_worker.worker import WorkerStartError, run_worker

    signal.signal(signal.SIGTERM, _interrupt)  # stop the paired agent too, whenever it comes

    try:
        run_worker(_redis_url(redis_url), list(queues), agent_endpoint=agent_endpoint, agent_command=agent_command,
                   agent_log=agent_log, name=name, burst=burst, startup_timeout_s=startup_timeout,
                   pidfile=agent_pidfile, agent_slots=agent_slots, curve=curve, curve_server_key=agent_curve_key,
                   sandbox=sandbox)
    except WorkerStartError as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        pass


def _serve_episode_metrics(port: int) -> None:
    """Multiprocess mode must be chosen before prometheus_client is first imported: a stock
    `rq worker`'s forked horses and this process then write to the same directory."""
    import tempfile

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        directory = tempfile.mkdtemp(prefix="flateval-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from broker.exporter import metrics_registry, serve_metrics

    try:
        serve_metrics(port, metrics_registry(multiprocess_dir=directory))
    except OSError as exc:
        raise CliError(f"cannot serve metrics on port {port}: {exc.strerror or exc}") from None


@main.command()
@click.option("--redis", "redis_url", envvar=cfg.REDIS_URL_ENV, help="Redis URL.")
@click.option("--port", type=click.IntRange(1, 65535), default=9108, show_default=True)
@click.option("--multiproc-dir", type=click.Path(file_okay=False),
              help="Also serve the episode metrics written here by workers (PROMETHEUS_MULTIPROC_DIR).")
def exporter(redis_url: str | None, port: int, multiproc_dir: str | None) -> None:
    """Serve Redis-derived metrics (queues, workers, submissions) on /metrics."""
    import threading

    from broker.exporter import metrics_registry, serve_metrics

    conn = _conn(redis_url)
    try:
        serve_metrics(port, metrics_registry(conn, multiproc_dir))
    except OSError as exc:
        raise CliError(f"cannot serve metrics on port {port}: {exc.strerror or exc}") from None
    click.echo(f"flateval exporter: serving /metrics on :{port}", err=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


# --------------------------------------------------------------------------------------- submit & co
@main.command()
@click.option("--redis", "redis_url", envvar=cfg.REDIS_URL_ENV)
@click.option("--test-set", type=click.Path(), help="Test set directory; default: the challenge's.")
@click.option("--name", help="A name for the submission.")
@challenge_options
def submit(redis_url: str | None, test_set: str | None, name: str | None, challenge: str | None, phase: str | None,
           planning_timeout: float | None, step_timeout: float | None, overall_timeout: float | None,
           env: str | None, episodes: int | None, seed: int | None) -> None:
    """Enqueue a submission for remote workers; print its id."""
    from broker import submit as submitting
    from broker.local_run import RunError, connect
    from broker.plan import PlanError, plan_submission
    from broker.test_set import TestSetError
    from flateval.challenge import ChallengeError

    try:
        plan = plan_submission(challenge=challenge, phase=phase, test_set=test_set, env=env, episodes=episodes,
                               seed=seed, planning_timeout_s=planning_timeout, step_timeout_s=step_timeout,
                               overall_timeout_s=overall_timeout)
        conn = connect(_redis_url(redis_url))
    except (TestSetError, RunError, ChallengeError, PlanError) as exc:
        raise CliError(str(exc)) from None
    sid = submitting.create(conn, plan, name=name)
    submitting.enqueue(conn, sid, plan, submitting.episode_specs(sid, plan))
    click.echo(sid)


def _conn(redis_url: str | None):
    from broker.local_run import RunError, connect

    try:
        return connect(_redis_url(redis_url))
    except RunError as exc:
        raise CliError(str(exc)) from None


@main.command()
@click.argument("submission_id")
@click.option("--redis", "redis_url", envvar=cfg.REDIS_URL_ENV)
def status(submission_id: str, redis_url: str | None) -> None:
    """Show a submission's status and progress."""
    from broker import store

    conn = _conn(redis_url)
    record = store.get_submission(conn, submission_id)
    if record is None:
        raise CliError(f"no submission {submission_id}")
    done = store.count_results(conn, submission_id)
    score = (record.get("score") or {}).get("mean_normalized_return")
    line = f"{submission_id}  {record['status']}  {done}/{record['n_episodes']} episodes"
    if score is not None:
        line += f"  mean normalized return {score:.6f}"
    if record.get("error"):
        line += f"  ({record['error']})"
    click.echo(line)


@main.command()
@click.argument("submission_id")
@click.option("--redis", "redis_url", envvar=cfg.REDIS_URL_ENV)
@click.option("--output", type=click.Path(dir_okay=False))
def results(submission_id: str, redis_url: str | None, output: str | None) -> None:
    """Print (or write) a submission's results JSON."""
    from broker.results import results_document

    conn = _conn(redis_url)
    try:
        document = results_document(conn, submission_id)
    except KeyError:
        raise CliError(f"no submission {submission_id}") from None
    _write_json(document, output)


@main.command()
@click.argument("submission_id")
@click.option("--redis", "redis_url", envvar=cfg.REDIS_URL_ENV)
def cancel(submission_id: str, redis_url: str | None) -> None:
    """Cancel a submission: queued episodes are removed, it gets no score."""
    from broker import store
    from broker.submit import drop_queue

    conn = _conn(redis_url)
    if store.get_submission(conn, submission_id) is None:
        raise CliError(f"no submission {submission_id}")
    if not store.finalize(conn, submission_id, store.CANCELLED, "cancelled by user"):
        raise CliError(f"submission {submission_id} has already ended")
    dropped = drop_queue(conn, submission_id)
    click.echo(f"{submission_id} cancelled ({dropped} queued episodes removed)")


@main.command()
@click.argument("results_file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["csv", "evalai"]), required=True)
@click.option("--output", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
@click.option("--split", default=None, help="EvalAI split name (default: the results' phase, else 'test').")
def export(results_file: str, fmt: str, output: str | None, split: str | None) -> None:
    """Export a results JSON as flatland's results CSV or EvalAI's result list."""
    from scoring.export import ExportError, to_csv, to_evalai

    try:
        document = json.loads(Path(results_file).read_text())
        text = to_csv(document) if fmt == "csv" else json.dumps(to_evalai(document, split), indent=2) + "\n"
    except OSError as exc:
        raise CliError(f"cannot read {results_file}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{results_file} is not JSON: {exc.msg} at line {exc.lineno}") from None
    except ExportError as exc:
        raise CliError(f"{results_file}: {exc}") from None
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)


# --------------------------------------------------------------------------------------- test sets
@main.command("generate-test-set")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(["small", "medium", "neurips2020-debug"]), default="small",
              show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
def generate_test_set(out: str, preset: str, seed: int) -> None:
    """Write a test set in flatland's evaluator layout, with a metadata.csv."""
    from env_worker.flatland_test_set import generate_test_set as generate

    written = generate(out, preset, seed, progress=lambda name: click.echo(f"  {name}", err=True))
    click.echo(f"{len(written)} envs written to {out}")


if __name__ == "__main__":
    main()
