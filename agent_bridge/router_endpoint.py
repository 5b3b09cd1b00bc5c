"""The agent's end of the link for agents that must hear the evaluator while they are busy elsewhere.

A REP socket answers strictly in turn: while a request is unanswered it cannot read the next one.
After a missed deadline the evaluator drops its connection and sends ``aborted`` on a new one; an
agent driven by someone else's loop (a FlatlandRemoteClient script) must read that notice even
though the abandoned request was never answered, and must never answer the abandoned request on
the new connection. A ROUTER socket does both: it reads every request as it comes, each with the
identity of the connection it came on, and a reply goes to exactly that connection (a reply to a
connection that is gone is dropped). The env side's REQ socket cannot tell the difference.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from agent_bridge import protocol as wire
from agent_bridge.server import INTERRUPT_CHECK_S, bind_agent_socket


@dataclass(frozen=True)
class Request:
    peer: bytes  # the connection it came on
    message: dict

    @property
    def type(self) -> str:
        return self.message["type"]


class RouterEndpoint:
    def __init__(self, endpoint: str | None = None, max_request_bytes: int = wire.DEFAULT_MAX_REQUEST_BYTES,
                 log: Callable[[str], None] = lambda text: None) -> None:
        self._sock, how = bind_agent_socket(zmq.ROUTER, endpoint, max_request_bytes)
        self._log = log
        log(f"serving on {how}")

    def receive(self, timeout_s: float | None = None, interrupted: Callable[[], bool] = lambda: False) -> Request | None:
        """The next request (None when `timeout_s` passes first, or `interrupted()` turns true: it
        is asked every `INTERRUPT_CHECK_S` while waiting, since a signal may land on a thread other
        than the one blocked in ZeroMQ). Frames that are not a request of this protocol are logged
        and skipped: they cannot be answered."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = INTERRUPT_CHECK_S if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._sock.poll(math.ceil(min(left, INTERRUPT_CHECK_S) * 1000)):
                if interrupted() or (deadline is not None and time.monotonic() >= deadline):
                    return None
                continue
            frames = self._sock.recv_multipart(copy=True)
            if len(frames) != 3 or frames[1] != b"":
                self._log(f"ignored a message of {len(frames)} frames: not a request of the flateval protocol")
                continue
            try:
                return Request(frames[0], wire.decode_request(frames[2]))
            except wire.ProtocolError as exc:
                self._log(f"ignored a request: {exc}")

    def receive_ready(self) -> list[Request]:
        """Every request already waiting, without blocking."""
        ready = []
        while self._sock.poll(0):
            request = self.receive(0)
            if request is None:
                break
            ready.append(request)
        return ready

    def reply(self, request: Request, message: Any) -> None:
        self._sock.send_multipart([request.peer, b"", wire.encode(message)], copy=True)

    def close(self) -> None:
        self._sock.close(linger=0)
