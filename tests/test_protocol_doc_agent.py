"""docs/protocol.md is enough to write an agent: a foreign agent built from it alone plays real episodes.

`tests/foreign_agent/doc_agent.py` uses only zmq, msgpack and numpy (checked below). It runs as a real
process behind a real socket; it reports what it received to a JSON file named by $DOC_AGENT_REPORT.
The byte-level examples in the document are checked against the real encoder as well.
"""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import msgpack
import numpy as np
import pytest

from agent_bridge import protocol as wire
from env_worker.agent_link import AgentLink
from env_worker.episode import run_episode
from core.episode_spec import EpisodeSpec

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "protocol.md"
DOC_AGENT = Path(__file__).resolve().parent / "foreign_agent" / "doc_agent.py"

TREE_OBS = {"builder": "tree", "max_depth": 1}
TREE_IN_FORCE = {**TREE_OBS, "predictor_depth": 50}  # the env side fills in the defaults


def test_doc_agent_imports_nothing_of_ours():
    tree = ast.parse(DOC_AGENT.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "json", "os", "struct", "sys", "msgpack", "numpy", "zmq"}, imported


def test_doc_agent_plays_full_episodes(small_test_set, start_agent, tmp_path, monkeypatch):
    report_path = tmp_path / "doc_agent_report.json"
    monkeypatch.setenv("DOC_AGENT_REPORT", str(report_path))  # inherited by the agent process
    agent = start_agent(script=DOC_AGENT.read_text())  # a real process; the fixture stops it
    link = AgentLink(agent.endpoint)
    results = []
    try:
        for env_file in ("Test_0/Level_0.pkl", "Test_1/Level_0.pkl"):
            spec = EpisodeSpec(env_path=str(small_test_set / env_file), env_file=env_file,
                               episode_id=f"doc-{env_file}", step_timeout_s=10.0)
            results.append(run_episode(spec, link))
    finally:
        link.close()

    for result in results:
        assert result.outcome == "completed", result.error
        assert result.steps > 0
        assert result.observation == TREE_IN_FORCE

    report = json.loads(report_path.read_text())
    assert report["hellos"] >= 2  # start-up probe + one per episode
    episodes = report["episodes"]
    assert [e["env_file"] for e in episodes] == ["Test_0/Level_0.pkl", "Test_1/Level_0.pkl"]
    for episode, result in zip(episodes, results):
        assert episode["cut"] is None
        assert episode["observation"] == TREE_IN_FORCE
        # the documented tree layout: one float64 [R(1)=5, 12] array per agent, NaN rows for missing nodes
        assert episode["obs_shapes"] == [[5, 12]]
        assert episode["obs_dtypes"] == ["<f8"]
        assert episode["obs_layout_ok"]
        assert episode["root_rows_present"] > 0
        assert episode["missing_rows"] > 0
        assert episode["rail"] == {"shape": episode["rail"]["shape"], "dtype": "<u2", "matches_grid": True}
        assert episode["n_agents"] == result.n_agents and episode["n_actions"] == 5
        assert set(episode["deadlines"]) == {"planning_s", "step_s"}
        assert episode["agents_fields"] == sorted(["initial_position", "initial_direction", "target",
                                                   "earliest_departure", "latest_arrival", "speed"])
        # one step request per env step but the last; its actions actually reached the env
        assert episode["steps_seen"] == list(range(1, result.steps))
        assert episode["forward_actions"] > 0
        end = episode["end"]
        assert end["outcome"] == "completed" and end["steps"] == result.steps
        assert end["normalized_return"] == pytest.approx(result.normalized_return)
        assert end["percentage_complete"] == pytest.approx(result.percentage_complete)


# ----------------------------------------------------------------- the document's byte examples

STEP_EXAMPLE = {"type": "step", "step": 7, "observations": None, "rewards": [0], "dones": [False],
                "info": {"action_required": [True], "malfunction": [0], "speed": [1.0], "state": [3],
                         "position": [[3, 4]], "direction": [1]}}
ACT_EXAMPLE = {"type": "act", "actions": {0: 2}}


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every ``` fenced block, in document order."""
    blocks, tag, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if tag is None:
                tag, body = line[3:].strip(), []
            else:
                blocks.append((tag, "\n".join(body)))
                tag = None
        elif tag is not None:
            body.append(line)
    assert tag is None, "unclosed code fence"
    return blocks


def _hex_block(text: str, tag: str) -> bytes:
    (body,) = [body for info, body in _fenced_blocks(text) if info == tag]
    return bytes.fromhex("".join(body.split()))


def _annotated_blocks(text: str) -> list[bytes]:
    """Untagged blocks whose lines are hex bytes followed by a wide gap and a comment."""
    out = []
    for info, body in _fenced_blocks(text):
        lines = [line for line in body.splitlines() if line.strip()]
        if info or not lines or not re.match(r"^[0-9a-f]{2}(\s|$)", lines[0]):
            continue
        data = ""
        for line in lines:
            head = re.split(r"\s{3,}", line.strip())[0]
            assert re.fullmatch(r"([0-9a-f]{2} ?)+", head), line
            data += head.replace(" ", "")
        out.append(bytes.fromhex(data))
    return out


def test_document_byte_examples_match_the_encoder():
    text = DOC.read_text()
    step_bytes, act_bytes = wire.encode(STEP_EXAMPLE), wire.encode(ACT_EXAMPLE)
    assert _hex_block(text, "hex-step") == step_bytes
    assert _hex_block(text, "hex-act") == act_bytes
    assert msgpack.unpackb(act_bytes, strict_map_key=False) == ACT_EXAMPLE
    assert f"Its {len(step_bytes)} bytes" in text and f"{len(act_bytes)} bytes:" in text

    ext_example = wire.encode({"obs": np.array([[0.0, math.nan, math.inf]])})
    annotated = _annotated_blocks(text)
    assert annotated == [ext_example, step_bytes, act_bytes]
    # and the env side accepts the documented act reply for a one-train env
    assert wire.parse_actions(wire.decode_reply(act_bytes), n_agents=1, n_actions=5) == {0: 2}
