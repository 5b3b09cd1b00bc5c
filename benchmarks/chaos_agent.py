"""The chaos soak's agent: a do-nothing agent (scores equal stepping the env directly) that answers
a little late each step, and applies the faults the soak's seeded schedule gave it, on itself:

    python benchmarks/chaos_agent.py '{"Test_3/Level_1.pkl": ["stop", 12, 0.8], "Test_7/Level_0.pkl": ["kill", 5, 0]}' [STEP_S]

``stop``: SIGSTOP at that step of that episode, resumed (SIGCONT) by a child after the given seconds;
``kill``: SIGKILL at that step. Applied by the agent itself, the fault lands in exactly the episode
the schedule named, however the episodes are spread over the pairs; a re-run of that episode (its
worker was killed) meets the same fault again, so the expected outcome of every episode is known.
"""

import json
import os
import signal
import sys
import time

from agent_bridge import serve

STEP_DELAY_S = float(sys.argv[2]) if len(sys.argv) > 2 else 0.004  # its time per step


class ChaosAgent:
    def __init__(self, plan: dict) -> None:
        self.plan = plan
        self.env_file = ""

    def reset(self, episode: dict) -> None:
        self.env_file = episode.get("env_file", "")

    def act(self, observations: dict, info: dict) -> dict:
        fault = self.plan.get(self.env_file)
        if fault and info.get("step", 0) == fault[1]:
            stop_or_kill(fault[0], fault[2])
        time.sleep(STEP_DELAY_S)
        return {}


def stop_or_kill(kind: str, seconds: float) -> None:
    me = os.getpid()
    if kind == "kill":
        os.kill(me, signal.SIGKILL)
    if os.fork() == 0:  # the resumer: wakes its parent up, and is gone
        time.sleep(seconds)
        os.kill(me, signal.SIGCONT)
        os._exit(0)
    os.kill(me, signal.SIGSTOP)


if __name__ == "__main__":
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # resumers are reaped by the kernel
    serve(ChaosAgent(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}))
