"""A real RabbitMQ (Debian's ``rabbitmq-server``) on free loopback ports, for the FAB tests.

Its own node name, AMQP port, distribution port and epmd (started here, on a port of its own, so no
daemon outlives the test), data and log folders in a private directory that belong to the
``rabbitmq`` user the broker runs as. Everything is stopped by its own pid.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
EPMD = "/usr/bin/epmd"
START_TIMEOUT_S = 60.0


class RabbitUnavailable(RuntimeError):
    """RabbitMQ cannot be started here (not installed, not root); the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:  # its own session: whatever it started goes with it
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


@dataclass
class RabbitMQ:
    port: int
    directory: Path
    server: subprocess.Popen
    epmd: subprocess.Popen
    tls_port: int | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def tls_url(self) -> str:
        """The TLS listener (client certificate required), as FAB's orchestrators reach RabbitMQ."""
        return f"amqps://guest:guest@127.0.0.1:{self.tls_port}//"

    def client_tls(self) -> dict[str, str]:
        """FAB's orchestrator's TLS variables for a client certificate of the test CA."""
        tls = self.directory / "tls"
        return {"RABBITMQ_CA_CERTS": str(tls / "ca.pem"), "RABBITMQ_CERTFILE": str(tls / "client.pem"),
                "RABBITMQ_KEYFILE": str(tls / "client.key")}

    def log_tail(self, chars: int = 2000) -> str:
        text = ""
        for log in sorted((self.directory / "log").glob("*.log")):
            text += log.read_text(errors="replace")
        return text[-chars:]

    def stop(self) -> None:
        _stop(self.server)
        _stop(self.epmd, 5.0)
        shutil.rmtree(self.directory, ignore_errors=True)


def _certificates(folder: Path, owner: pwd.struct_passwd) -> None:
    """A test CA, the broker's certificate (127.0.0.1) and a client's, all signed by it (openssl)."""
    folder.mkdir()

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=flateval test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days",
            "1", *ext, "-out", f"{name}.pem")
    for path in folder.iterdir():
        os.chown(path, owner.pw_uid, owner.pw_gid)
        path.chmod(0o644)


def start_rabbitmq(tls: bool = False) -> RabbitMQ:
    """A RabbitMQ broker that accepts guest/guest on 127.0.0.1, ready for AMQP when this returns; with
    `tls`, a TLS listener beside it that requires a client certificate of the test CA (FAB's setup:
    its backend sends on plain AMQP, its orchestrators consume over TLS)."""
    if not os.path.exists(SERVER) or not os.path.exists(EPMD):
        raise RabbitUnavailable("rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)")
    if os.geteuid() != 0:
        raise RabbitUnavailable("starting rabbitmq-server as its own user needs root")
    user = pwd.getpwnam("rabbitmq")
    directory = Path(tempfile.mkdtemp(prefix="flateval-rabbitmq-"))
    directory.chmod(0o755)
    for sub in ("mnesia", "log"):
        (directory / sub).mkdir()
        os.chown(directory / sub, user.pw_uid, user.pw_gid)
    port, dist_port, epmd_port = _free_port(), _free_port(), _free_port()
    config = (f"listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users = none\nlog.console = false\n"
              "log.file.level = warning\n")
    tls_port = None
    if tls:
        if shutil.which("openssl") is None:
            raise RabbitUnavailable("a TLS listener needs openssl (Debian: apt-get install openssl)")
        tls_port = _free_port()
        _certificates(directory / "tls", user)
        config += (f"listeners.ssl.1 = 127.0.0.1:{tls_port}\n"
                   f"ssl_options.cacertfile = {directory / 'tls' / 'ca.pem'}\n"
                   f"ssl_options.certfile = {directory / 'tls' / 'server.pem'}\n"
                   f"ssl_options.keyfile = {directory / 'tls' / 'server.key'}\n"
                   "ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n")
    (directory / "rabbitmq.conf").write_text(config)
    (directory / "enabled_plugins").write_text("[].\n")
    node = f"flateval{uuid.uuid4().hex[:10]}@localhost"
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "HOME": user.pw_dir, "LANG": "C.UTF-8",
           "ERL_EPMD_PORT": str(epmd_port), "ERL_EPMD_ADDRESS": "127.0.0.1",
           "RABBITMQ_NODENAME": node, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(port),
           "RABBITMQ_DIST_PORT": str(dist_port), "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
           "RABBITMQ_LOG_BASE": str(directory / "log"), "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
           "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
           "RABBITMQ_PID_FILE": str(directory / "mnesia" / "rabbit.pid")}
    epmd = subprocess.Popen([EPMD, "-port", str(epmd_port), "-address", "127.0.0.1"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    server = subprocess.Popen([SERVER], env=env, cwd=directory, user=user.pw_uid, group=user.pw_gid,
                              extra_groups=[], stdin=subprocess.DEVNULL, stdout=open(directory / "stdout", "wb"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    rabbit = RabbitMQ(port, directory, server, epmd, tls_port)
    try:
        _wait_ready(rabbit)
    except BaseException:
        tail = (directory / "stdout").read_text(errors="replace")[-1500:] + rabbit.log_tail(1500)
        rabbit.stop()
        raise RabbitUnavailable(f"rabbitmq-server did not start: {tail.strip()}")
    return rabbit


def _wait_ready(rabbit: RabbitMQ) -> None:
    """Ready once an AMQP client completes its handshake (the port opens before the broker boots)."""
    from kombu import Connection

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if rabbit.server.poll() is not None:
            raise RuntimeError(f"exited with code {rabbit.server.returncode}")
        try:
            with Connection(rabbit.url, connect_timeout=1) as conn:
                conn.connect()
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)  # the broker's boot is no event we can wait on
