"""Waiting for a ZeroMQ message with our eyes open, on both ends of the agent link.

A process blocked in `poll` takes tens of microseconds to be woken by the kernel; a peer that answers
in less than that is cheaper to wait for by busy-polling the socket. `sched_yield` keeps the spin
from stealing the core when another process needs it. Measured on a 2-core machine: the env side's
per-step overhead fell from 0.43 to 0.19 ms.
"""

from __future__ import annotations

import os
import time

import zmq


def spin_until_readable(sock: zmq.Socket, until: float) -> bool:
    """Busy-poll until a message is readable on `sock` (True) or `time.perf_counter()` reaches
    `until` (False)."""
    while True:
        if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            return True
        if time.perf_counter() >= until:
            return False
        os.sched_yield()
