"""One network link between two namespaces, played by a process: what `tc netem` does, by hand.

    python netwire.py NETNS_A DEV_A NETNS_B DEV_B SEED

It attaches to the TUN device DEV_A in network namespace NETNS_A and DEV_B in NETNS_B, and moves
every IP packet from one to the other after a one-way delay, dropping each with a probability
(a seeded random draw per packet, so a run can be replayed), or all of them while the link is cut.
Packets leave in the order they came. Commands on stdin, one per line, each answered ``ok``:

    shape <one-way delay ms> <loss %>     cut     restore

It ends when stdin closes (whoever started it is gone). Standard library only; needs root.
"""

from __future__ import annotations

import ctypes
import fcntl
import heapq
import os
import random
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def open_tun(device: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", device.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main(ns_a: str, dev_a: str, ns_b: str, dev_b: str, seed: str) -> None:
    enter_netns(ns_a)
    tun_a = open_tun(dev_a)
    enter_netns(ns_b)
    tun_b = open_tun(dev_b)
    other = {tun_a: tun_b, tun_b: tun_a}
    rng = random.Random(int(seed))
    delay_s, loss, cut = 0.0, 0.0, False
    queue: list[tuple[float, int, int, bytes]] = []
    sequence = 0
    control = sys.stdin.fileno()
    print("ok", flush=True)
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        ready, _, _ = select.select([tun_a, tun_b, control], [], [], timeout)
        now = time.monotonic()
        for fd in ready:
            if fd == control:
                line = sys.stdin.readline()
                if not line:
                    return
                words = line.split()
                if words[0] == "shape":
                    delay_s, loss = float(words[1]) / 1000, float(words[2]) / 100
                elif words[0] in ("cut", "restore"):
                    cut = words[0] == "cut"
                print("ok", flush=True)
                continue
            while True:
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if cut or (loss and rng.random() < loss):
                    continue
                sequence += 1
                heapq.heappush(queue, (now + delay_s, sequence, other[fd], packet))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, packet = heapq.heappop(queue)
            try:
                os.write(out, packet)
            except OSError:
                pass  # the device is gone or full: the packet is lost, as on a wire


if __name__ == "__main__":
    main(*sys.argv[1:6])
