"""Start, check, restart and stop one participant agent process (`flateval run`'s side of a pair).

The agent runs in its own session (process group) so that stopping it also stops whatever its shell
command spawned; its stdout and stderr go to a log file, bounded (its head, its tail, a count of
the rest: the sandbox's launcher or `output_keeper` writes it), whose tail is kept with the submission.

With a `SandboxSpec` (what `flateval run` and `flateval worker --agent-command` always give, unless
``--no-sandbox``) the agent is fenced in (`env_worker.sandbox`, docs/sandbox.md): its own uid when
we are root, its own pid, mount and network namespaces (its link is then an ``ipc://`` socket in its
private directory), cgroup limits on cores, CPU time, memory and processes, an allowlisted
environment; it dies with its worker even when the worker is SIGKILLed. Without one it runs as we
do, with an environment stripped of Redis credentials (a debugging mode).

The sandbox API, beyond start/restart/stop:

- ``sandbox_line()``: the one line saying which fences are in force here and which are not, and why;
- ``breach() -> str | None``: after a lost episode, the limit the agent broke since the last call,
  named for the user (``"memory limit 15 GiB exceeded"``, ``"process limit 512 reached"``);
- ``usage(reset_peak=False) -> AgentUsage(cpu_s, peak_memory_bytes, source)``: CPU seconds (user +
  system, every process of the agent) since it started, and its peak memory since it started or
  since the last ``reset_peak``. Two small file reads with a cgroup: call it at an episode's start
  (``reset_peak=True``) and end, and take ``end.cpu_since(start)``.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO, Callable

import zmq

from agent_bridge import protocol as wire
from agent_bridge.server import BIND_ENV, CURVE_SECRET_ENV, SPIN_ENV
from env_worker.agent_link import AgentFault, AgentLink, AgentProtocolFault
from env_worker.sandbox import NO_SANDBOX, AgentUsage, Sandbox, SandboxError, SandboxSpec, launcher
from core.process_identity import live_group_members
from env_worker.sandbox.usage import session_usage

OUTPUT_TAIL_CHARS = 10_000
HANDSHAKE_RECONNECT_MS = 10
"""While waiting for an agent to start, try to connect this often (one connect call: cheap)."""


class AgentStartError(RuntimeError):
    """The agent command did not start, or did not answer the handshake in time."""


LISTEN_PORTS = range(20000, 32000)
"""Below Linux's ephemeral range (32768-60999), so no outgoing connection can be handed the port
between our probe and the agent's bind (bind(0) would pick from inside that range)."""


def free_tcp_endpoint() -> tuple[str, str]:
    """A (bind, connect) endpoint pair on a loopback port that is free right now."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.choice(LISTEN_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port}"
    raise AgentStartError("no free loopback port for the agent")


def agent_environment(bind: str, base: dict[str, str] | None = None, curve_secret: str | None = None) -> dict[str, str]:
    """The agent's environment: ours minus anything that could reach Redis (or read the metrics),
    plus its bind endpoint and, with CURVE, its secret key."""
    env = {
        key: value
        for key, value in (base if base is not None else os.environ).items()
        if "REDIS" not in key.upper() and not key.upper().startswith(("RQ_", "PROMETHEUS", "FLATEVAL_"))
        or key == SPIN_ENV
    }
    env[BIND_ENV] = bind
    if curve_secret:
        env[CURVE_SECRET_ENV] = curve_secret
    return env


def wait_for_handshake(endpoint: str, timeout_s: float, curve_server_key: str | None = None,
                       exited: Callable[[], str | None] = lambda: None,
                       last_output: Callable[[], str] = lambda: "") -> None:
    """Block until the agent at `endpoint` answers a hello; `AgentStartError` if it does not within
    `timeout_s`, or as soon as `exited` names a reason (the agent's process is gone).

    One hello waits for the agent to bind and answer, the link trying to connect every 10 ms: the
    handshake completes as soon as the agent is ready (asking again on a timer, as before, cost up
    to a quarter of a second of every start). A connection that drops is asked again."""
    deadline = time.monotonic() + timeout_s

    def check() -> None:
        reason = exited()
        if reason is not None:
            raise AgentStartError(reason)

    link = AgentLink(endpoint, curve_server_key=curve_server_key, reconnect_max_ms=HANDSHAKE_RECONNECT_MS)
    try:
        while True:
            check()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentStartError(
                    f"agent did not answer the handshake on {endpoint} within {timeout_s:g} s{last_output()}")
            try:
                link.receive(link.send(wire.hello_request(), left), check)
                return
            except AgentProtocolFault as exc:  # it answered, wrongly: asking again cannot help
                raise AgentStartError(f"agent handshake failed: {exc}") from None
            except AgentFault:
                continue  # the link reset itself; the time left decides
    finally:
        link.close()


class AgentProcess:
    """One agent instance started from a shell command."""

    def __init__(self, command: str, log_path: str | Path, bind: str | None = None, connect: str | None = None,
                 curve: bool = False, pidfile: str | Path | None = None, sandbox: SandboxSpec | None = None):
        """`pidfile`, when given, gets the pid of every agent started (restarts included) once it
        answered its handshake: whoever supervises us can kill the current agent even if we die.
        `sandbox`: fence the agent in (see the module's docstring)."""
        try:
            self.sandbox = Sandbox(sandbox, endpoint=bind) if sandbox else None
        except (SandboxError, OSError) as exc:
            raise AgentStartError(f"cannot build the agent's sandbox: {exc}") from None
        if bind is None:
            bind, connect = (self.sandbox.endpoint,) * 2 if self.sandbox else free_tcp_endpoint()
        # With `curve`, the agent gets a fresh key pair; the env side needs only its public key.
        public, secret = zmq.curve_keypair() if curve else (b"", b"")
        self.curve_public_key = public.decode() or None
        self._curve_secret = secret.decode() or None
        self.command = command
        self.bind = bind
        self.endpoint = connect or bind
        self.log_path = Path(log_path)
        self.pidfile = Path(pidfile) if pidfile else None
        self.process: subprocess.Popen | None = None
        self._keeper: subprocess.Popen | None = None  # bounds the log of an agent without a sandbox
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout_s: float = 60.0, handshake: bool = True) -> None:
        """Start the command; with `handshake`, block until it answers a hello and say so in the
        pidfile (else call `wait_ready` and `mark_ready` later: the agent starts up meanwhile)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            if self.sandbox:  # its launcher keeps the log bounded
                self.process = self._launch(log)
            else:
                self._keeper, pipe = output_keeper(log)
                with pipe:
                    self.process = self._launch(pipe)
        if handshake:
            self.wait_ready(timeout_s)
            self.mark_ready()

    def _launch(self, log: BinaryIO) -> subprocess.Popen:
        """Start the agent, its output to `log`; the process returned stands for the agent (its
        supervisor's view: the sandbox's launcher, or the command's shell)."""
        try:
            if self.sandbox:
                return self.sandbox.launch(self.command, self.bind, self._curve_secret, log)
            return subprocess.Popen(
                self.command, shell=True, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=agent_environment(self.bind, curve_secret=self._curve_secret), start_new_session=True,
            )
        except SandboxError as exc:
            raise AgentStartError(f"cannot start the agent in its sandbox: {exc}") from None
        except OSError as exc:
            raise AgentStartError(f"cannot start agent command {shlex.quote(self.command)}: {exc}") from None

    def start_hint(self) -> str | None:
        """What to check when the agent dies before answering."""
        return self.sandbox.hint() if self.sandbox else None

    def mark_ready(self) -> None:
        """Write the agent's pid to the pidfile, if any: whoever supervises us learns it is up (and
        whom to kill should we die)."""
        if self.pidfile:
            partial = self.pidfile.with_name(self.pidfile.name + ".partial")
            partial.write_text(str(self.process.pid))
            partial.replace(self.pidfile)  # atomic: a reader never sees half a pid

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the agent answers a hello, it exits, or `timeout_s` passes."""
        def exited() -> str | None:
            code = self.process.poll() if self.process else None
            if code is None:
                return None
            last = self.output_tail(400).strip().splitlines()
            why = self.breach() or self.start_hint()
            hint = f" ({why})" if why else ""
            return f"agent command exited with code {code} before answering" + (f": {last[-1]}" if last else "") + hint

        def last_output() -> str:
            last = self.output_tail(400).strip().splitlines()
            return f" (its last output: {last[-1]})" if last else ""

        wait_for_handshake(self.endpoint, timeout_s, self.curve_public_key, exited, last_output)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def restart(self, timeout_s: float = 60.0) -> None:
        self.stop()
        self.restarts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n[flateval] restarting agent (restart #{self.restarts})\n".encode())
        self.start(timeout_s)

    def stop(self, grace_s: float = 3.0) -> None:
        """Stop the agent and everything its command started (its whole process group): SIGTERM,
        `grace_s` for the whole group to exit (an agent may say its last words, as a script's
        ``submit()`` does: the shell of the command exits at once, the agent need not), then SIGKILL."""
        if self.process is None:
            return
        pgid = self.process.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace_s
        while self.process.poll() is None or live_group_members(pgid):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)  # a process group's exit is no event anyone can wait on
        try:  # anything the command left behind in its group
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        if self.sandbox:
            self.sandbox.stopped()
        self._stop_keeper()
        self.process = None

    def _stop_keeper(self) -> None:
        """Reap the process that kept the log of an agent without a sandbox: it ends as its pipe's
        last writer does (a process the agent detached may still hold it: then it goes on alone)."""
        if self._keeper is not None:
            try:
                self._keeper.wait(1)
            except subprocess.TimeoutExpired:
                pass
            self._keeper = None

    def sandbox_line(self) -> str:
        """Which fences are in force for this agent, and which are not and why (one line)."""
        if self.sandbox is None:
            return NO_SANDBOX
        return self.sandbox.report.line() if self.sandbox.report else "sandbox: not started yet"

    def breach(self) -> str | None:
        """The limit the agent broke since the last call, if any (see the module's docstring)."""
        if self.sandbox is None:
            return None
        return self.sandbox.breach(lambda: self.output_tail(2000))

    def usage(self, reset_peak: bool = False) -> AgentUsage:
        """The agent's CPU seconds and peak memory so far (see the module's docstring)."""
        measured = self.sandbox.usage(reset_peak) if self.sandbox is not None else None
        return measured or (session_usage(self.pid) if self.pid else AgentUsage(None, None, "none"))

    def output_tail(self, chars: int = OUTPUT_TAIL_CHARS) -> str:
        return agent_output_tail(self.log_path, chars)


def output_keeper(log: BinaryIO) -> tuple[subprocess.Popen, BinaryIO]:
    """A process that copies what is written to the returned pipe into `log`, bounded as the
    sandbox's launcher bounds a sandboxed agent's (its head, its tail, a count of the rest): for an
    agent without a sandbox, or in a container."""
    read, write = os.pipe()
    try:
        keeper = subprocess.Popen([sys.executable, "-I", "-S", launcher.__file__, launcher.KEEP_OUTPUT], stdin=read,
                                  stdout=log, stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        os.close(write)
        raise
    finally:
        os.close(read)
    return keeper, os.fdopen(write, "wb")


def agent_output_tail(log_path: Path, chars: int = OUTPUT_TAIL_CHARS) -> str:
    """The last `chars` characters an agent wrote to its log ("" if it wrote none)."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - chars * 4))
            return fh.read().decode(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""
