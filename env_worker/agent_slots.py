"""Pairing workers with agents where the platform cannot (docker-compose's ``--scale``).

On Kubernetes a pod pairs one worker with one agent over localhost. docker-compose scales services
independently and cannot pair their containers, but it names them ``<project>-agent-<i>``. A worker
given ``--agent-endpoint tcp://flateval-agent-{slot}:8086 --agent-slots N`` claims a free slot i in
Redis (``SET flateval:agent_slot:<i> <worker> NX EX``), keeps the lease alive from a side thread, and
releases it on exit; a crashed worker's slot frees itself when the lease runs out.
"""

from __future__ import annotations

import threading

import redis

from broker.store import agent_slot_key
from core.thread_signals import block_stop_signals

LEASE_S = 30
RENEW_S = 10


class SlotLease:
    def __init__(self, conn: redis.Redis, slot: int, owner: str) -> None:
        self.conn, self.slot, self.owner = conn, slot, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"agent-slot-{slot}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        block_stop_signals()  # the worker's main thread takes them (core/thread_signals.py)
        while not self._stop.wait(RENEW_S):
            try:
                self.conn.set(agent_slot_key(self.slot), self.owner, xx=True, ex=LEASE_S)
            except redis.RedisError:
                continue

    def release(self) -> None:
        self._stop.set()
        try:
            if self.conn.get(agent_slot_key(self.slot)) == self.owner.encode():
                self.conn.delete(agent_slot_key(self.slot))
        except redis.RedisError:
            pass


class NoFreeSlot(RuntimeError):
    pass


def claim_slot(conn: redis.Redis, slots: int, owner: str) -> SlotLease:
    """The lowest free slot in 1..slots (compose numbers containers from 1)."""
    for slot in range(1, slots + 1):
        if conn.set(agent_slot_key(slot), owner, nx=True, ex=LEASE_S):
            return SlotLease(conn, slot, owner)
    raise NoFreeSlot(f"all {slots} agent slots are taken: scale the agents with the workers")
