"""The one line that says which fences are in force on this machine, which are not, and why.

    sandbox: user 1800001234, netns, pidns (dies with its worker), mounts (...), cpus 1 (cpuset),
    quota 1 cpu (cgroup v1), memory 256 MiB (cgroup v1), pids 64 (cgroup v1), disk 2 GiB (home, /tmp,
    /var/tmp, /dev/shm: one tmpfs, gone when it stops), dir (private),
    env (allowlist); not: quota: no writable cgroup has the controller

Every item starts with its fence's key; `parse_line` gives them back (tests skip on a missing
fence with the reason printed here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FENCES = ("user", "netns", "pidns", "mounts", "cpus", "quota", "memory", "pids", "disk", "dir", "env")
PREFIX = "sandbox: "
OFF = "; not: "
NO_SANDBOX = ("sandbox: off (--no-sandbox): the agent runs as flateval's user, with its network, files and "
              "environment (less Redis and flateval variables), and no limits")


@dataclass
class Report:
    on: dict[str, str] = field(default_factory=dict)  # key -> what is in force ("1800001234", "(cgroup v1)")
    off: dict[str, str] = field(default_factory=dict)  # key -> why not

    def put(self, key: str, detail: str | None = None, reason: str | None = None) -> None:
        """`detail` when the fence is in force, else `reason` for why it is not."""
        if detail is not None:
            self.on[key] = detail
            self.off.pop(key, None)
        else:
            self.on.pop(key, None)
            self.off[key] = (reason or "unavailable").replace(";", ",").replace("\n", " ")

    def line(self) -> str:
        on = ", ".join(f"{key} {self.on[key]}".rstrip() for key in FENCES if key in self.on)
        text = PREFIX + (on or "nothing in force")
        if self.off:
            text += OFF + "; ".join(f"{key}: {self.off[key]}" for key in FENCES if key in self.off)
        return text


_KEYS = "|".join(FENCES)


def parse_line(line: str) -> Report:
    """The fences of a printed sandbox line."""
    if not line.startswith(PREFIX):
        raise ValueError(f"not a sandbox line: {line!r}")
    on_text, _, off_text = line[len(PREFIX):].partition(OFF)
    report = Report()
    for item in re.split(rf", (?=(?:{_KEYS})\b)", on_text):
        key, _, detail = item.partition(" ")
        if key in FENCES:
            report.on[key] = detail
    for item in re.split(rf"; (?=(?:{_KEYS}):)", off_text) if off_text else []:
        key, _, reason = item.partition(": ")
        report.off[key] = reason
    return report
