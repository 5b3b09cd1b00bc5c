"""A do-nothing agent that notes when episodes reach it and leave it.

For the scheduling and start-up benchmark: it appends ``start <time.time()> <env_file>`` on every
``episode_start`` and ``end <time.time()>`` on every ``episode_end`` to the file named by
``$STAMP_FILE`` (the benchmark runs on one machine, one clock). ``$STAMP_OBSERVATION`` (JSON) makes
it ask for an observation builder, to measure observation cost end to end.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

from agent_bridge import serve


class StampAgent:
    def __init__(self, stamp_file: str | None, observation: dict | None) -> None:
        self.stamp_file = stamp_file
        if observation:
            self.observation = observation

    def _stamp(self, line: str) -> None:
        if self.stamp_file:
            with open(self.stamp_file, "a") as out:
                out.write(line + "\n")

    def reset(self, episode_info: Mapping[str, Any]) -> None:
        self._stamp(f"start {time.time():.6f} {episode_info.get('env_file')}")

    def act(self, observations: Mapping[int, Any], info: Mapping[str, Any]) -> dict:
        return {}

    def end(self, result: Mapping[str, Any]) -> None:
        self._stamp(f"end {time.time():.6f}")


if __name__ == "__main__":
    observation = os.environ.get("STAMP_OBSERVATION")
    serve(StampAgent(os.environ.get("STAMP_FILE"), json.loads(observation) if observation else None))
