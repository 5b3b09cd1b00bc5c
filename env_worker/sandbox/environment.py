"""The sandboxed agent's environment, built from an allowlist: what a program needs to run and
nothing of the host's (no credentials, tokens, sockets or Redis URLs, whatever their names)."""

from __future__ import annotations

import os
from typing import Mapping

from agent_bridge.server import BIND_ENV, CURVE_SECRET_ENV, SPIN_ENV
from core.cpu_share import thread_variables

ALLOWED = frozenset({
    "PATH", "LANG", "LANGUAGE", "TZ", "TERM",
    "PYTHONPATH", "PYTHONHOME", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE",
    "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONWARNINGS", "PYTHONFAULTHANDLER", "PYTHONOPTIMIZE",
    "VIRTUAL_ENV", "LD_LIBRARY_PATH",
    SPIN_ENV,
})
"""Locale (and ``LC_*``), the search paths and Python's own switches that hold paths or flags only."""

def sandboxed_environment(bind: str, home: str, cores: int, curve_secret: str | None = None,
                          base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The agent's environment: the allowlisted variables of `base` (default ours), a private HOME and
    TMPDIR, thread pools sized to its cores (unless `base` sizes them), its bind endpoint and, with
    CURVE, its secret key."""
    source = os.environ if base is None else base
    env = {key: value for key, value in source.items() if key in ALLOWED or key.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    env.update(HOME=home, TMPDIR=os.path.join(home, "tmp"), USER="agent", LOGNAME="agent")
    env.update(thread_variables(cores, source))
    env[BIND_ENV] = bind
    if curve_secret:
        env[CURVE_SECRET_ENV] = curve_secret
    return env
