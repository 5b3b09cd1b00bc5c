"""`flateval run`'s stop signals. The first SIGINT or SIGTERM stops the run where it is (a
KeyboardInterrupt: it cancels the submission, keeps the episodes that finished, and stops what it
started); any later one, since people press Ctrl-C again and again, only hurries that stop along
(`again`: no more waiting for agents and workers to end on their own). None of them cuts the writing
of the results short: the embedded Redis goes with the run, the file is the only copy."""

from __future__ import annotations

import signal
import threading
from typing import Any

STOPS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    def __init__(self) -> None:
        self.again = threading.Event()
        self._stopping = False

    def install(self) -> "StopRequests":
        """Take SIGINT and SIGTERM (from the main thread)."""
        for stop in STOPS:
            signal.signal(stop, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stopping:
            self.again.set()
            return
        self._stopping = True
        raise KeyboardInterrupt

    @staticmethod
    def ignore() -> None:
        """The run has ended; what is left is saving its results and exiting: no stop signal counts
        from here (ignored by the kernel, so not even Python's own shutdown is cut short by one)."""
        for stop in STOPS:
            signal.signal(stop, signal.SIG_IGN)
