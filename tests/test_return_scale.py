"""The `return` scale keeps the order of returns for envs whose rewards are negative (issue 18).

MountainCar-v0 costs 1 per step: a reference return of -110 divided into -122 gave 1.109 and into
-114 gave 1.036, ranking the worse agent higher. With `min_return` the score is (return - min) /
(reference - min); a negative reference without it is refused. End to end: two real agents of
different quality through `flateval run`, checked against gymnasium stepped directly.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from core.challenge import ChallengeError, parse_challenge
from scoring.episode import scaled_return
from tests.test_gymnasium import gymnasium_return
from tests.test_run import flateval, leftover_processes

MOUNTAIN_CAR = """\
name: mountaincar
environment: gymnasium
env_id: MountainCar-v0
seed: 0
default_phase: dev
defaults:
  time_limits: {{planning_s: 30, step_s: 2, overall_s: 300}}
  scoring: {{{scoring}}}
phases:
  dev: {{episodes: 3}}
"""

# Pushing along the velocity pumps energy and reaches the flag; always pushing right never does (-200).
PUMP = "2 if obs[1] > 0 else 0"
RIGHT = "2"
AGENT = """
from agent_bridge import serve
class Scripted:
    def reset(self, info): pass
    def act(self, obs, info): return {action}
serve(Scripted())
"""


def policy(expression: str):
    return lambda obs: eval(expression, {"obs": obs})


@pytest.mark.parametrize("total,reference,minimum,score", [
    (500.0, 500.0, None, 1.0), (250.0, 500.0, None, 0.5), (250.0, 500.0, 0.0, 0.5),  # CartPole: the old scale
    (-110.0, -110.0, -200.0, 1.0), (-114.0, -110.0, -200.0, 86 / 90), (-122.0, -110.0, -200.0, 78 / 90),
    (-200.0, -110.0, -200.0, 0.0), (-100.0, -110.0, -200.0, 100 / 90),  # MountainCar: better than the reference
    (7.0, None, None, 7.0), (-7.0, None, -200.0, -7.0),  # no reference: the return itself
])
def test_the_scale_for_both_signs(total, reference, minimum, score):
    assert scaled_return(total, reference, 0.0, minimum) == pytest.approx(score)
    assert scaled_return(total, reference, 1.0, minimum) == pytest.approx(score + 1.0)


def test_higher_returns_score_higher_whatever_the_sign():
    for reference, minimum in ((500.0, None), (-110.0, -200.0), (-0.5, -1.0), (10.0, -10.0)):
        returns = sorted({minimum or 0.0, reference, reference - 1.0, reference + 1.0, (minimum or 0.0) + 0.5})
        scores = [scaled_return(r, reference, 0.0, minimum) for r in returns]
        assert scores == sorted(scores) and len(set(scores)) == len(scores), (reference, minimum)


@pytest.mark.parametrize("scoring,message", [
    ({"reference_return": -110},
     "phases.dev.scoring.reference_return: -110 is negative, so dividing by it would rank a worse return higher; "
     "set min_return"),
    ({"reference_return": -110, "min_return": -100}, "phases.dev.scoring.min_return: must be below reference_return "
                                                     "(-110), got -100"),
    ({"reference_return": 500, "min_return": 500}, "phases.dev.scoring.min_return: must be below reference_return"),
    ({"min_return": -200}, "phases.dev.scoring.min_return: needs a reference_return"),
])
def test_a_scale_that_inverts_the_order_is_refused(scoring, message):
    data = {"name": "x", "environment": "gymnasium", "env_id": "MountainCar-v0", "defaults": {"scoring": scoring},
            "phases": {"dev": {"episodes": 3}}}
    with pytest.raises(ChallengeError) as caught:
        parse_challenge(data, "c.yaml")
    assert str(caught.value).startswith(f"challenge c.yaml: {message}")


def test_min_return_is_gymnasiums_only():
    with pytest.raises(ChallengeError, match=r"phases.a.scoring.min_return: only for environment gymnasium"):
        parse_challenge({"name": "x", "phases": {"a": {"scoring": {"min_return": -1}}}}, "c.yaml")


def test_the_cli_refuses_an_inverting_challenge_in_one_line(tmp_path):
    challenge = tmp_path / "mc.yaml"
    challenge.write_text(MOUNTAIN_CAR.format(scoring="reference_return: -110"))
    started, before = time.monotonic(), leftover_processes("flateval-run-")
    done = flateval("run", "--challenge", str(challenge), "--agent", f"{sys.executable} -c pass", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [done.stderr.strip()] and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"flateval: challenge {challenge}: phases.dev.scoring.reference_return: -110 is "
                                  "negative")
    assert time.monotonic() - started < 20 and leftover_processes("flateval-run-", before) == []


def _run(tmp_path: Path, challenge: Path, action: str) -> dict:
    script = tmp_path / f"agent_{len(list(tmp_path.glob('agent_*.py')))}.py"
    script.write_text(AGENT.format(action=action))
    out = tmp_path / f"{script.stem}.json"
    done = flateval("run", "--challenge", str(challenge), "--workers", "1", "--agent", f"{sys.executable} {script}",
                    "--output", str(out))
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


def test_the_better_mountain_car_agent_ranks_higher_through_flateval_run(tmp_path):
    challenge = tmp_path / "mc.yaml"
    challenge.write_text(MOUNTAIN_CAR.format(scoring="reference_return: -110, min_return: -200"))
    scores = {}
    for name, action in (("pump", PUMP), ("right", RIGHT)):
        document = _run(tmp_path, challenge, action)
        assert document["status"] == "finished" and document["settings"]["min_return"] == -200
        for episode in document["episodes"]:
            total, steps = gymnasium_return("MountainCar-v0", episode["seed"], policy(action))
            assert (episode["outcome"], episode["return"], episode["steps"]) == ("completed", total, steps)
            assert episode["normalized_return"] == pytest.approx((total + 200) / 90)
        scores[name] = document["score"]["mean_normalized_return"]
        print(name, [e["return"] for e in document["episodes"]], scores[name])
    assert scores["right"] == pytest.approx(0.0)  # never reaches the flag: the env's worst return scores 0
    assert scores["pump"] > scores["right"]
