"""A network of our own on this machine: Redis, every env worker and every agent on hosts of their own.

Each member gets a network namespace of its own; links join two members point to point (a star
around Redis, and each agent beside its worker). A link is a pair of TUN devices, one in each
namespace, joined by a small process (benchmarks/netwire.py) that carries every IP packet across
after a one-way delay, drops each with a seeded probability, or drops all of them while the link
is cut (a silent partition: connections stay open, packets vanish) until it is restored. That is
what `tc netem` on a veth pair does; this machine's kernel has no netem (CONFIG_NET_SCH_NETEM is
not set), so the wire does it in user space, and does the same on any kernel.

Only this machine is ever addressed. The addresses are IPv4 link-local, 169.254.<100 + i>.1/.2
for link i (never the 169.254.169.254 of cloud metadata), and exist only inside the namespaces
made here: nothing is routed to or from the host's own interfaces, routes or firewall, which are
never touched (every device is made inside a namespace of ours with ``ip -n``). Namespaces are
named ``fnl<pid>x<random>-<member>``: unique per lab; those of a lab whose process died before
`close` (SIGKILL) are deleted by the next lab. Every process started in the lab dies with the
process that started it (PR_SET_PDEATHSIG; a wire also ends when its stdin closes) and is stopped
by pid on `close`, which every exit path calls (context manager, atexit).

Needs root (CI runs as root), iproute2 and /dev/net/tun; `unavailable()` says why a lab cannot be
made here.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

WIRE = Path(__file__).resolve().parent / "netwire.py"
_LAB_NAME = re.compile(r"^fnl(\d+)x[0-9a-f]{4}-")
_PR_SET_PDEATHSIG = 1


def unavailable() -> str | None:
    """Why no lab can be made on this machine (None: one can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the suite as root)"
    if shutil.which("ip") is None:
        return "no `ip` on PATH (Debian: apt-get install iproute2)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun (the links are TUN devices)"
    probe = f"fnl{os.getpid()}x{secrets.token_hex(2)}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Link:
    """A point-to-point link between two members, played by a wire process."""

    def __init__(self, wire: subprocess.Popen, near: str, far: str) -> None:
        self.wire, self.near, self.far = wire, near, far  # the addresses at each end
        self._ack()

    def _ack(self) -> None:
        if self.wire.stdout.readline().strip() != "ok":
            raise RuntimeError(f"the link's wire did not start (exit code {self.wire.poll()})")

    def _say(self, command: str) -> None:
        self.wire.stdin.write(command + "\n")
        self.wire.stdin.flush()
        self._ack()

    def shape(self, rtt_ms: float = 0.0, loss_pct: float = 0.0) -> None:
        """A round trip of `rtt_ms` (half each way) and `loss_pct` of the packets lost each way."""
        self._say(f"shape {rtt_ms / 2:g} {loss_pct:g}")

    def cut(self) -> None:
        """Drop every packet both ways (connections stay open, as in a real partition)."""
        self._say("cut")

    def restore(self) -> None:
        self._say("restore")


class NetLab:
    """Members (namespaces) and the links between them."""

    def __init__(self, seed: int = 0) -> None:
        reap_stale_labs()
        self.prefix = f"fnl{os.getpid()}x{secrets.token_hex(2)}"
        self.seed = seed
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self.wires: list[Link] = []
        atexit.register(self.close)

    def netns(self, member: str) -> str:
        return f"{self.prefix}-{member}"

    def add(self, member: str) -> str:
        """A new member: a namespace of its own, with its loopback up."""
        name = self.netns(member)
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def link(self, a: str, b: str) -> Link:
        """Join members `a` and `b` (address ``.1`` and ``.2`` of 169.254.<100 + n>.0/30)."""
        n = len(self.wires)
        net = f"169.254.{100 + n}"
        device = f"l{n}"
        for member, here, there in ((a, 1, 2), (b, 2, 1)):
            ns = self.netns(member)
            _run("ip", "-n", ns, "tuntap", "add", "dev", device, "mode", "tun")
            _run("ip", "-n", ns, "addr", "add", f"{net}.{here}", "peer", f"{net}.{there}", "dev", device)
            _run("ip", "-n", ns, "link", "set", device, "up")
        wire = self.popen(None, [sys.executable, "-I", "-S", str(WIRE), self.netns(a), device, self.netns(b),
                                 device, str(self.seed * 1000 + n)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.wires.append(Link(wire, f"{net}.1", f"{net}.2"))
        return self.wires[-1]

    def command(self, member: str, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the member's namespace; it dies with whoever starts it (util-linux's
        setpriv sets the parent-death signal where it is installed: Redis, an agent)."""
        deathsig = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        return [*deathsig, "ip", "netns", "exec", self.netns(member), *argv]

    def popen(self, member: str | None, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start `argv` in the member's namespace (None: ours); it dies with us, and `close`
        stops it by pid."""
        command = self.command(member, argv) if member else list(argv)
        process = subprocess.Popen(command, preexec_fn=_die_with_parent, **kwargs)
        self.processes.append(process)
        return process

    def close(self) -> None:
        """Stop every process started here by pid (the members' first, the links' wires last: a
        worker's shutdown still talks to Redis), then delete every namespace made here."""
        wires = [link.wire for link in self.wires]
        _stop([p for p in self.processes if p not in wires])
        _stop(wires)
        self.processes.clear()
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        self.namespaces.clear()

    def __enter__(self) -> "NetLab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stop(processes: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGTERM them all, then wait for each (SIGKILL past the grace), and close their pipes."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def reap_stale_labs() -> list[str]:
    """Delete the namespaces of labs whose process is gone (it was SIGKILLed before `close`)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
    stale = []
    for line in listed:
        name = line.split(" ", 1)[0]
        match = _LAB_NAME.match(name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
            stale.append(name)
    return stale
