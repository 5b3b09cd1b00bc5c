"""Serve a participant's policy on a ZeroMQ REP socket, one episode at a time, forever."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Mapping, Protocol

import zmq

from agent_bridge import protocol as wire
from agent_bridge.spin import spin_until_readable

DEFAULT_ENDPOINT = "tcp://*:8086"
BIND_ENV = "FLATEVAL_AGENT_BIND"
CURVE_SECRET_ENV = "FLATEVAL_CURVE_SECRET_KEY"
"""The agent's CURVE secret key (Z85); when set, the agent only talks CurveZMQ-encrypted."""
SPIN_ENV = "FLATEVAL_SPIN_US"
"""Microseconds to busy-wait for the next request after replying (0: block at once). Set by
`flateval run` when every process of a pair has a core of its own."""


INTERRUPT_CHECK_S = 0.02
"""An agent's main thread, waiting for a request, gets back to Python this often. A SIGTERM may be
taken by any thread of the process (a BLAS pool's, say); Python runs its handler in the main thread
only once that thread is back in Python, and one blocked in ZeroMQ until the next request never is:
the agent sat out its stop grace and was killed (3 s of a run's end, one run in two)."""


class Terminated(BaseException):
    """SIGTERM reached `serve`: the evaluator or the engine (`docker stop`) ends the agent. A
    BaseException, so a policy's own ``except Exception`` cannot swallow it."""


def stop_on_sigterm() -> None:
    """Make SIGTERM end `serve` at once. An agent that is a container's PID 1 would otherwise ignore
    it (the kernel drops signals that PID 1 has no handler for) and `docker stop` would wait its
    whole timeout. Left alone when the process already handles SIGTERM or this is not the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def terminated(signum: int, frame: Any) -> None:
        # Once: the stop may come twice (the sandbox's launcher passes it on, and its worker signals
        # the whole group), and a second raise inside the first one's cleanup would skip closing
        # the socket, leaving ZeroMQ's exit waiting for it until the SIGKILL.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    signal.signal(signal.SIGTERM, terminated)


class Policy(Protocol):
    """What `serve` needs from a participant's policy.

    Optional extras: an ``observation`` attribute (e.g. ``{"builder": "tree", "max_depth": 2}``)
    asks the env side for that observation builder; ``end(result)`` and ``abort(reason)`` are
    called, when present, as an episode ends or is cut.
    """

    def reset(self, episode_info: Mapping[str, Any]) -> None: ...

    def act(self, observations: Mapping[int, Any], info: Mapping[str, Any]) -> Any: ...


def plain_actions(actions: Any) -> Any:
    """Turn numpy scalars and enums into plain ints so msgpack sends them as integers (what cannot
    be turned is left for the env side to name)."""
    if isinstance(actions, Mapping):
        return {_plain_int(h): _plain_int(a) for h, a in actions.items()}
    return actions


def _plain(value: Any) -> Any:
    """A single agent's action (Gymnasium) as plain msgpack values, since a reply may hold no ext
    type: numpy arrays become nested lists, numpy scalars and enums Python numbers, floats stay floats."""
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    inner = getattr(value, "value", value)  # enums
    return inner if isinstance(inner, (int, float, str)) else value


def _plain_int(value: Any) -> Any:
    if type(value) is int:
        return value
    inner = getattr(value, "value", value)  # enums
    try:
        return int(inner) if not isinstance(inner, bool) else inner
    except (TypeError, ValueError):
        return value  # let the env side say what is wrong with it


def _observations(message: Mapping[str, Any], single_agent: bool) -> Any:
    """What the policy's `act` gets: a single agent's observation as it is, else handle -> observation."""
    obs = message.get("observations")
    if single_agent:
        return obs
    if obs is None:
        return {}
    if isinstance(obs, list):
        return dict(enumerate(obs))
    return obs


def _step_info(message: Mapping[str, Any]) -> dict[str, Any]:
    info = dict(message.get("info") or {})
    for key in ("step", "rewards", "dones"):
        if key in message:
            info[key] = message[key]
    return info


class _Session:
    """The agent-side state machine: which episode we are in, and what a request asks."""

    def __init__(self, policy: Policy, name: str, log: Any) -> None:
        self.policy = policy
        self.name = name
        self.log = log
        self.episode_id: str | None = None
        self.single_agent = False

    def _aborted(self, reason: str) -> None:
        self.log(f"episode {self.episode_id} aborted: {reason}")
        self.episode_id = None
        abort = getattr(self.policy, "abort", None)
        if abort is not None:
            abort(reason)

    def _act(self, message: dict) -> dict:
        action = self.policy.act(_observations(message, self.single_agent), _step_info(message))
        return wire.act_reply(_plain(action) if self.single_agent else plain_actions(action))

    def handle(self, message: dict) -> dict:
        kind = message["type"]
        if kind == wire.HELLO:
            return wire.hello_reply(self.name, getattr(self.policy, "observation", None))
        if kind == wire.EPISODE_START:
            if self.episode_id is not None:
                self._aborted("a new episode started before this one ended")
            self.episode_id = message.get("episode_id", "?")
            self.single_agent = (message.get("env") or {}).get("kind") == wire.KIND_GYMNASIUM
            self.policy.reset(message)
            return self._act(message)
        if kind == wire.STEP:
            return self._act(message)
        if kind == wire.EPISODE_END:
            end = getattr(self.policy, "end", None)
            if end is not None:
                end(message)
            self.episode_id = None
            return wire.ok_reply()
        if kind == wire.ABORTED:
            if self.episode_id is not None:
                self._aborted(str(message.get("reason", "deadline missed")))
            return wire.ok_reply()
        return wire.error_reply(f"unknown request type {kind!r}")


def serve(
    policy: Policy,
    endpoint: str | None = None,
    *,
    name: str | None = None,
    max_request_bytes: int = wire.DEFAULT_MAX_REQUEST_BYTES,
    max_requests: int | None = None,
    spin_s: float | None = None,
) -> None:
    """Bind a REP socket and answer the env side until killed.

    `endpoint` defaults to ``$FLATEVAL_AGENT_BIND``, then ``tcp://*:8086``. An exception in the
    policy is sent back as an ``error`` reply (the env side scores that episode as an agent error)
    and the agent keeps serving. `max_requests` stops after that many requests (for tests). SIGTERM
    (and Ctrl-C) end it at once, PID 1 in a container or not.
    """
    stop_on_sigterm()
    _import_numpy()
    if spin_s is None:
        spin_s = float(os.environ.get(SPIN_ENV, "0") or 0) / 1e6
    name = name or type(policy).__name__

    def log(text: str) -> None:
        print(f"[agent {name}] {text}", file=sys.stderr, flush=True)

    sock, how = bind_agent_socket(zmq.REP, endpoint, max_request_bytes)
    log(f"serving on {how}")
    session = _Session(policy, name, log)
    served = 0
    try:
        while max_requests is None or served < max_requests:
            while not sock.poll(round(INTERRUPT_CHECK_S * 1000)):
                pass  # back in Python now and then: see INTERRUPT_CHECK_S
            frame = sock.recv(copy=True)
            served += 1
            try:
                reply = session.handle(wire.decode_request(frame))
                out = wire.encode(reply)
            except Exception as exc:  # the policy's fault: report it, keep serving
                log("policy raised:\n" + traceback.format_exc(limit=5))
                out = wire.encode(wire.error_reply(f"{type(exc).__name__}: {exc}"))
            sock.send(out, copy=True)
            if spin_s:
                spin_until_readable(sock, time.perf_counter() + spin_s)
    except (KeyboardInterrupt, Terminated) as stop:
        log("stopping: " + ("SIGTERM" if isinstance(stop, Terminated) else "interrupted"))
    finally:
        sock.close(linger=0)


def bind_agent_socket(kind: int, endpoint: str | None = None,
                      max_request_bytes: int = wire.DEFAULT_MAX_REQUEST_BYTES) -> tuple[zmq.Socket, str]:
    """The agent's socket, bound where the evaluator said (``$FLATEVAL_AGENT_BIND``, else
    ``tcp://*:8086``), CurveZMQ-encrypted when it gave a key; and a description for the log. A
    failure to bind ends the agent with one line."""
    endpoint = endpoint or os.environ.get(BIND_ENV) or DEFAULT_ENDPOINT
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_request_bytes)
    secret = os.environ.get(CURVE_SECRET_ENV)
    if secret:
        sock.curve_secretkey = secret.encode()
        sock.curve_publickey = zmq.curve_public(secret.encode())
        sock.curve_server = True
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise SystemExit(f"agent: cannot bind {endpoint}: {exc}") from None
    return sock, endpoint + (" (CurveZMQ)" if secret else "")


def _import_numpy() -> None:
    """Import numpy before the handshake: the first episode's rail arrives as an array, and a
    lazy import there (~0.1 s) would be charged to the agent's planning time."""
    try:
        import numpy  # noqa: F401
    except ImportError:  # an agent without numpy still serves messages without arrays
        pass
