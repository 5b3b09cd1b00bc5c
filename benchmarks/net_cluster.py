"""flateval as a deployment spreads it, on one machine: Redis on a host of its own, every env worker on
its own, every agent beside its worker, each host a network namespace of a `netlab.NetLab`.

Each worker reaches Redis over its own link, and its agent over another (`netlab.Link`: delay,
loss, cut, restore). Workers are stock `flateval worker`s following every open submission, each
owning its agent (started in the agent's namespace, reached over TCP at the agent's address); the
test or benchmark drives Redis over the server's unix socket, from outside the lab's links.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import redis

from broker import store
from broker.embedded_redis import RedisServer, start_redis
from chaos_soak import wait_until
from netlab import Link, NetLab

ROOT = Path(__file__).resolve().parent.parent
FLATEVAL = [sys.executable, "-m", "flateval"]
REDIS_PORT = 6379  # inside Redis's own namespace, where no one else has ports
AGENT_PORT = 8086  # inside each agent's own namespace


@dataclass
class NetPair:
    name: str
    redis: Link  # the worker's link to Redis (Redis is `near`, the worker `far`)
    agent: Link  # the worker's link to its agent (the worker is `near`, the agent `far`)
    log: Path
    worker: subprocess.Popen | None = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class NetCluster:
    def __init__(self, lab: NetLab, work: Path, pairs: int, agent: str) -> None:
        self.lab, self.work, self.agent = lab, work, agent
        work.mkdir(parents=True, exist_ok=True)
        lab.add("redis")
        self.server: RedisServer = start_redis(port=REDIS_PORT, launcher=lab.command("redis", []), bind="0.0.0.0",
                                               directory=str(work / "redis"))
        self.conn = redis.Redis.from_url(self.server.url)
        self.pairs = []
        for i in range(pairs):
            worker, agent_host = lab.add(f"w{i}"), lab.add(f"a{i}")
            self.pairs.append(NetPair(f"w{i}", lab.link("redis", f"w{i}"), lab.link(f"w{i}", f"a{i}"),
                                      work / f"w{i}.log"))

    def start_workers(self, timeout_s: float = 120.0) -> None:
        """Start every pair's worker (and through it its agent); return once all answer for duty."""
        for pair in self.pairs:
            self.start_worker(pair)
        for pair in self.pairs:
            wait_until(lambda: "waiting for episodes" in pair.log_text() or pair.worker.poll() is not None,
                       timeout_s, f"{pair.name} to start")
            if pair.worker.poll() is not None:
                raise RuntimeError(f"{pair.name} exited: {pair.log_text()[-2000:]}")

    def start_worker(self, pair: NetPair) -> subprocess.Popen:
        """Start one pair's worker (it starts its agent); it follows every open submission."""
        i = pair.name[1:]
        argv = [*FLATEVAL, "worker", "--name", pair.name, "--no-sandbox",
                "--agent-command", "exec " + shlex.join(self.lab.command(f"a{i}", [])) + f" {self.agent}",
                "--agent-endpoint", f"tcp://{pair.agent.far}:{AGENT_PORT}",
                "--agent-log", str(self.work / f"a{i}.log")]
        env = {**os.environ, "FLATEVAL_REDIS_URL": f"redis://{pair.redis.near}:{REDIS_PORT}/0"}
        with open(pair.log, "ab") as log:
            pair.worker = self.lab.popen(pair.name, argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        return pair.worker

    def submit(self, test_set: Path, *flags: str) -> str:
        done = subprocess.run([*FLATEVAL, "submit", "--redis", self.server.url, "--test-set", str(test_set), *flags],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"flateval submit failed: {done.stderr.strip()[-2000:]}")
        return done.stdout.strip().splitlines()[-1]

    def wait_ended(self, sid: str, timeout_s: float) -> str:
        return wait_until(lambda: (s := store.get_status(self.conn, sid)) in store.TERMINAL and s, timeout_s,
                          f"submission {sid} to end")

    def results(self, sid: str) -> dict:
        done = subprocess.run([*FLATEVAL, "results", sid, "--redis", self.server.url], capture_output=True,
                              text=True, cwd=ROOT, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"flateval results failed: {done.stderr.strip()[-2000:]}")
        return json.loads(done.stdout)

    def shape(self, redis_rtt_ms: float = 0.0, redis_loss_pct: float = 0.0, agent_rtt_ms: float = 0.0,
              agent_loss_pct: float = 0.0) -> None:
        for pair in self.pairs:
            pair.redis.shape(redis_rtt_ms, redis_loss_pct)
            pair.agent.shape(agent_rtt_ms, agent_loss_pct)

    def close(self) -> None:
        try:  # let the workers end what they do (an agent restart after a lost episode) before SIGTERM
            wait_until(lambda: next(self.conn.scan_iter(store.lease_key("*")), None) is None, 30, "idle workers")
        except (RuntimeError, redis.RedisError):
            pass
        self.conn.close()
        self.lab.close()  # the workers first (their agents with them), then the namespaces
        self.server.stop()
