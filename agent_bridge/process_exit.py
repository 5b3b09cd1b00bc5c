"""Ending an agent's process without tearing its interpreter down.

An agent that imported torch and flatland takes 0.4-0.6 s to tear its interpreter down (module by
module, object by object) once its script is over, and the evaluation waits for the agent to exit.
Nothing of that teardown can be seen from outside: what can is done first, as Python does it (the
non-daemon threads are joined, the exit functions the participant's code registered run, stdout and
stderr are flushed); files left open and unflushed are on the agent's private tmpfs, gone with it.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Callable, NoReturn


class _Exit:
    code = 0


def run_then_exit(main: Callable[[], int | None]) -> NoReturn:
    """Run a bridge's `main` and exit with its status (its return value, or its `SystemExit`'s; 1
    for an uncaught exception, whose traceback Python prints first), skipping the teardown. A
    KeyboardInterrupt ends the process as Python always does."""
    atexit.register(_exit_now)  # the first registered runs last: after every exit function of the agent's
    try:
        code = main()
    except SystemExit as exc:
        _Exit.code = _status(exc.code)
        raise
    except KeyboardInterrupt:
        atexit.unregister(_exit_now)
        raise
    except BaseException:
        _Exit.code = 1
        raise
    _Exit.code = _status(code)
    sys.exit(code)


def _status(code: object) -> int:
    """The process exit status Python gives ``sys.exit(code)``."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _exit_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed or replaced by the agent: nothing to keep
            pass
    os._exit(_Exit.code & 0xFF)
