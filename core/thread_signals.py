"""Stop signals are the main thread's to take.

The kernel hands a process's SIGTERM to any one of its threads that does not block it. Python runs
the handler in the main thread, but only once that thread runs Python again: a main thread blocked
in C (a worker's Redis pop, waiting for the next job) went on waiting out its timeout, one second,
whenever the signal landed on another thread, and a BLAS library's pool (numpy's OpenBLAS starts
one thread per core when it loads) or one of our own threads is another thread. Threads made while
the main thread blocks the stop signals inherit that block, and ours block them first thing.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def block_stop_signals() -> None:
    """In a thread of ours, first thing: leave the stop signals to the main thread."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Around what starts threads we do not write (imports of numpy, a ZeroMQ context, an HTTP
    server): they inherit the block. A stop signal sent meanwhile waits, and is taken as the block
    ends. Start no process inside: it would inherit the block too."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
