"""The env side's connection to one agent: a ZeroMQ REQ socket with measured deadlines.

Deadlines are measured, not slept: each request polls with exactly the time left, so a hung agent is
cut within a millisecond or so of its deadline. On any miss or fault the socket is closed with linger
0 and a fresh one is opened (ZeroMQ's Lazy Pirate pattern), so a late reply can never be taken for
the answer to a later request. A socket monitor notices at once when the agent's connection drops
(the agent died, or ZeroMQ dropped an over-size reply) instead of waiting out the deadline.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import zmq
from zmq.utils.monitor import parse_monitor_message

from agent_bridge import protocol as wire
from agent_bridge.spin import spin_until_readable
from core.outcomes import AGENT_ERROR, TIMEOUT
from core.settings import LINK_SPIN_ENV

DROP_DIAGNOSIS_S = 0.1
"""After the agent's connection drops mid-request, how long to wait to tell why. A dead peer makes
ZeroMQ retry the connection at once (EVENT_CONNECT_RETRIED within a millisecond or two); a reply cut
by ZeroMQ itself for exceeding the size cap is a protocol error, after which ZeroMQ never retries."""

DEFAULT_SPIN_S = float(os.environ.get(LINK_SPIN_ENV, "300")) / 1e6
"""After sending, busy-wait (yielding the core) this long for the reply before blocking in poll:
a blocked process takes tens of microseconds to be woken, which is most of a fast agent's round
trip. Measured on a 2-core machine: per-step overhead 0.43 -> 0.19 ms. 0 turns it off."""

CHECK_EVERY_S = 0.05
"""How often a wait with a `check` (the handshake's: has the agent exited?) asks it."""

ZERO_COPY_BYTES = 65536
"""Requests this large are handed to ZeroMQ without a copy (a global observation of 50 agents is
6 MB a step); below it, copying is cheaper than tracking the buffer (pyzmq's own advice)."""

_HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
"""Handshake failures that mean the two ends disagree (CURVE on one side only, wrong keys). A peer
that goes away mid-handshake (NO_DETAIL) is an ordinary disconnect."""
_MONITOR_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | _HANDSHAKE_FAILED
_GONE = "agent disconnected (its process exited or closed its socket)"
T = TypeVar("T")


class AgentFault(Exception):
    """The agent cost itself this episode. `outcome` is the episode outcome to record."""

    outcome = AGENT_ERROR


class AgentTimeout(AgentFault):
    outcome = TIMEOUT


class AgentProtocolFault(AgentFault):
    """The agent answered, but not in this protocol (wrong version, a malformed or unexpected reply):
    retrying cannot help, unlike a silence."""


@dataclass(frozen=True)
class PendingReply:
    """A request on its way: the reply it awaits, and when its deadline started."""

    kind: str
    sent: float
    timeout_s: float
    lost_idle: bool  # the connection was down when we sent: the request may never arrive


class AgentLink:
    """One REQ socket to one agent endpoint, re-created after every fault."""

    def __init__(
        self,
        endpoint: str,
        max_reply_bytes: int = wire.DEFAULT_MAX_REPLY_BYTES,
        context: zmq.Context | None = None,
        spin_s: float = DEFAULT_SPIN_S,
        curve_server_key: str | None = None,
        reconnect_max_ms: int = 500,
    ) -> None:
        """`curve_server_key`: the agent's CURVE public key (Z85); the link is then encrypted and
        authenticated with a fresh client key pair. `reconnect_max_ms`: the longest pause between two
        connection attempts (see `_open`)."""
        self.endpoint = endpoint
        self.max_reply_bytes = max_reply_bytes
        self._ctx = context or zmq.Context.instance()
        self._abort_notice: dict | None = None
        self.spin_s = spin_s
        self._curve = (curve_server_key.encode(), *zmq.curve_keypair()) if curve_server_key else None
        self._reconnect_max_ms = reconnect_max_ms
        self._open()

    # ------------------------------------------------------------------ socket lifecycle
    def _open(self) -> None:
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_reply_bytes)
        sock.setsockopt(zmq.RECONNECT_IVL, 10)
        # The first retry after a drop comes 10 ms later (that tells "gone" fast); repeated failures
        # back off to 500 ms by default, so a link to an agent that is really gone costs the I/O
        # thread little. A link waiting for an agent to start keeps trying every 10 ms instead: it
        # connects as soon as the agent binds, not up to half a second later.
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, self._reconnect_max_ms)
        if self._curve:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self._curve
        self._monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
        sock.connect(self.endpoint)
        self._sock = sock
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._lost = False  # the connection dropped and has not come back
        self._handshake_failed = False

    def _close(self) -> None:
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    def reset(self) -> None:
        """Lazy Pirate: drop the socket (and any late reply that may still arrive on it)."""
        self._close()
        self._open()

    def close(self) -> None:
        self._close()

    def _drain_monitor(self) -> list[int]:
        events = []
        while self._monitor.poll(0):
            event = parse_monitor_message(self._monitor.recv_multipart())["event"]
            if event == zmq.EVENT_CONNECTED:
                self._lost = False
            elif event == zmq.EVENT_DISCONNECTED:
                self._lost = True
            elif event & _HANDSHAKE_FAILED:
                self._handshake_failed = True
            events.append(event)
        return events

    # ------------------------------------------------------------------ requests
    def notify_aborted(self, episode_id: str, reason: str, normalized_return: float | None = None) -> None:
        """Tell the agent, at its next contact (or now: `deliver_notice`), that `episode_id` was cut."""
        self._abort_notice = wire.aborted_request(episode_id, reason, normalized_return)

    def deliver_notice(self, timeout_s: float) -> bool:
        """Send a pending ``aborted`` notice now and wait `timeout_s` for its answer: True if the
        agent answered (or nothing was pending). The answer is also a ping: an agent that cannot
        answer within one step deadline is hung."""
        if self._abort_notice is None:
            return True
        try:
            self.receive(self.send(self._take_notice(), timeout_s))
        except AgentFault:
            return False
        return True

    def drop_notice(self) -> None:
        """Forget a pending notice (its agent process was replaced: the new one never saw the episode)."""
        self._abort_notice = None

    def request(self, message: dict, timeout_s: float) -> tuple[dict, float]:
        """Send `message`, return (checked reply, seconds the agent took).

        The deadline runs from our message leaving to the agent's reply arriving: encoding and any
        pending ``aborted`` notice are not charged to it. Raises `AgentTimeout` when no reply
        arrives in time, `AgentFault` for a dropped connection, a reply that is not one valid
        frame, a wrong reply type or an ``error`` reply.
        """
        return self.receive(self.send(message, timeout_s))

    def send(self, message: dict, timeout_s: float) -> "PendingReply":
        """The first half of `request`: deliver any pending notice, send `message`, start its clock.
        Work done before `receive` overlaps with the agent's."""
        if self._abort_notice is not None:
            self.receive(self.send(self._take_notice(), timeout_s))
        return self._guarded(self._send_request, wire.encode(message), message["type"], timeout_s)

    def receive(self, pending: "PendingReply", check: Callable[[], None] | None = None) -> tuple[dict, float]:
        """The second half of `request`: wait for the reply with the time left of its deadline.
        `check`, if given, is called every `CHECK_EVERY_S` while waiting; it gives up by raising."""
        frame = self._guarded(self._await_reply, pending, check)
        took = time.perf_counter() - pending.sent
        try:
            reply = wire.check_reply(pending.kind, wire.decode_reply(frame))
        except wire.AgentReportedError as exc:
            raise AgentFault(f"agent raised: {exc}") from None
        except wire.ProtocolError as exc:
            raise AgentProtocolFault(str(exc)) from None
        return reply, took

    def _take_notice(self) -> dict:
        notice, self._abort_notice = self._abort_notice, None
        return notice

    def _guarded(self, step: Callable[..., T], *args: Any) -> T:
        try:
            return step(*args)
        except zmq.ZMQError as exc:  # the socket is in a state we cannot trust: start afresh
            self.reset()
            raise AgentFault(f"agent link failed: {exc}") from None

    def _handshake_check(self) -> None:
        if self._handshake_failed:
            self.reset()
            raise AgentFault("the ZeroMQ handshake with the agent failed: its CURVE encryption "
                             "settings or keys do not match ours")

    def _send(self, sock: zmq.Socket, frame: bytes, kind: str, timeout_s: float) -> None:
        """Send without ever blocking: a REQ socket with no usable connection (never connected,
        or dropped by ZeroMQ after a failed handshake) would block `send` forever."""
        copy = len(frame) < ZERO_COPY_BYTES
        try:
            sock.send(frame, zmq.NOBLOCK, copy=copy)
            return
        except zmq.Again:
            pass
        deadline = time.perf_counter() + timeout_s
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLOUT)
        poller.register(self._monitor, zmq.POLLIN)
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                self.reset()
                raise AgentTimeout(f"no connection to the agent to send '{kind}' on within the deadline")
            poller.poll(max(1, math.ceil(left * 1000)))
            self._drain_monitor()
            self._handshake_check()
            try:
                sock.send(frame, zmq.NOBLOCK, copy=copy)
                return
            except zmq.Again:
                continue

    def _send_request(self, frame: bytes, kind: str, timeout_s: float) -> "PendingReply":
        self._drain_monitor()
        self._handshake_failed = False  # only what happens while this request is under way counts
        # Connection lost before we sent (agent died between requests): wait for ZeroMQ to retry
        # (agent gone) or reconnect (request delivered after all).
        lost_idle = self._lost
        self._send(self._sock, frame, kind, timeout_s)
        return PendingReply(kind, time.perf_counter(), timeout_s, lost_idle)

    def _await_reply(self, pending: PendingReply, check: Callable[[], None] | None = None) -> bytes:
        sock = self._sock
        deadline = pending.sent + pending.timeout_s
        now = time.perf_counter()
        # Looked at first even past the deadline: a reply that came while we were busy with our own
        # work (loading our env while a replica loads its own) is the agent's in time, not late.
        if spin_until_readable(sock, min(deadline, now + self.spin_s)):
            return self._recv_one(sock)
        lost_idle = pending.lost_idle
        dropped_at: float | None = None  # connection lost mid-request
        while True:
            now = time.perf_counter()
            if dropped_at is not None and now >= dropped_at + DROP_DIAGNOSIS_S:
                self.reset()
                raise AgentFault(f"agent's reply was dropped by ZeroMQ: larger than the "
                                 f"{self.max_reply_bytes}-byte cap (or not valid ZeroMQ framing)")
            if now >= deadline:
                if lost_idle or dropped_at is not None:
                    self._gone()
                self.reset()
                raise AgentTimeout(f"no reply to '{pending.kind}' within {pending.timeout_s:g} s")
            until = deadline if dropped_at is None else min(deadline, dropped_at + DROP_DIAGNOSIS_S)
            if check is not None:
                check()
                until = min(until, now + CHECK_EVERY_S)
            ready = self._poller.poll(max(1, math.ceil((until - now) * 1000)))
            for socket, _ in ready:
                if socket is sock:
                    return self._recv_one(sock)
            events = self._drain_monitor()
            self._handshake_check()
            for event in events:
                if event == zmq.EVENT_CONNECT_RETRIED and (lost_idle or dropped_at is not None):
                    self._gone()
                if event == zmq.EVENT_CONNECTED and lost_idle and dropped_at is None:
                    lost_idle = False  # back before our request went out: it will be delivered
                elif event == zmq.EVENT_CONNECTED and dropped_at is not None:
                    self._gone()  # the peer went away and came back: our request is lost
                elif event == zmq.EVENT_DISCONNECTED and dropped_at is None:
                    dropped_at = time.perf_counter()

    def _gone(self) -> None:
        """The connection is lost. A key mismatch looks the same at first (the peer hangs up during
        the handshake); ZeroMQ's next attempt, 10 ms on, names it: look before we say which."""
        until = time.perf_counter() + DROP_DIAGNOSIS_S
        while not self._handshake_failed and time.perf_counter() < until:
            if self._monitor.poll(max(1, math.ceil((until - time.perf_counter()) * 1000))):
                self._drain_monitor()
        self._handshake_check()
        self.reset()
        raise AgentFault(_GONE)

    def _recv_one(self, sock: zmq.Socket) -> bytes:
        frame = sock.recv(copy=True)
        if sock.getsockopt(zmq.RCVMORE):
            self.reset()
            raise AgentProtocolFault("agent replied with a multipart message; the protocol takes exactly one frame")
        return frame
