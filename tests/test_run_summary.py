"""What `flateval run` tells a person when a run did not go as hoped (issue 18): a completion-gate stop
reads as a stop, not an error, with the planned count kept; the exports say so; a phase asking for
more episodes than the set has is warned about; the episodes that were not completed are listed
under the score table with their errors, and where the agent logs are; without --output the results
still land in a file whose path is printed."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from flateval.diagnosis import not_completed_lines
from flateval.results_file import RESULTS_DIR, save_results
from scoring.export import to_csv, to_evalai
from tests.test_run import DO_NOTHING, flateval

WIDE = {"COLUMNS": "200"}  # rich wraps a table to the terminal's width: keep each row on one line here


@pytest.fixture(scope="module")
def eight_env_set(small_test_set, tmp_path_factory) -> Path:
    """8 episodes: Test_0 and Test_1 with 3 levels, Test_2 with 2 (copies of the small set's envs)."""
    out = tmp_path_factory.mktemp("eight")
    sources = sorted(small_test_set.glob("*/*.pkl"))
    for i, (test, level) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]):
        (out / f"Test_{test}").mkdir(exist_ok=True)
        shutil.copy(sources[i % len(sources)], out / f"Test_{test}" / f"Level_{level}.pkl")
    return out


def results_path(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if line.startswith("results written to ")]
    return line.removeprefix("results written to ")


def test_a_gate_stop_is_a_stop_with_the_planned_count_and_the_exports_say_so(eight_env_set, tmp_path):
    rules = tmp_path / "gate.yaml"
    rules.write_text("name: gated\nphases:\n  p:\n    episodes: 50\n    stop_rules: {completion_gate: 0.25}\n")
    done = flateval("run", "--agent", DO_NOTHING, "--test-set", str(eight_env_set), "--workers", "2", "--challenge",
                    str(rules), cwd=tmp_path, env=WIDE)
    assert done.returncode == 0, done.stderr
    assert "flateval: warning: phase p asks for 50 episodes but the test set has 8: playing those 8" \
        in done.stderr.splitlines()

    # the table: a stop, not an error; the episodes it ran of those planned
    reason = "completion gate after Test_0 (mean 0.00 < 0.25)"
    rows = {cells[0]: cells[1] for cells in (
        [c.strip() for c in line.strip("│┃ ").split("│")] for line in done.stdout.splitlines() if "│" in line)
        if len(cells) == 2}
    assert rows["stopped by"] == reason and rows["episodes"] == "3 of 8"
    assert "error" not in rows and "not completed" not in done.stdout

    # the record: planned and run counts apart, the reason in stopped_by, no error, a score
    path = results_path(done.stderr)
    assert path.startswith(f"{RESULTS_DIR}/")
    document = json.loads((tmp_path / path).read_text())
    assert (document["status"], document["n_episodes"], document["planned_episodes"]) == ("finished", 3, 8)
    assert document["stopped_by"] == reason and document["error"] is None
    assert document["score"]["mean_normalized_return"] is not None

    rows = list(csv.DictReader(io.StringIO(to_csv(document))))
    assert len(rows) == 3 and {row["stopped_by"] for row in rows} == {reason}
    (entry,) = to_evalai(document)
    assert (entry["stopped_by"], entry["episodes"]) == (reason, "3 of 8")
    assert set(entry["accuracies"]) == {"mean_normalized_return", "percentage_complete"}  # what EvalAI checks


FLAKY = """
from agent_bridge import serve
class Flaky:
    def reset(self, info):
        self.bad = info["env_file"].startswith("Test_0")
    def act(self, obs, info):
        if self.bad and info["step"] == 2:
            raise RuntimeError("planner lost train 3")
        return {}
serve(Flaky())
"""


def test_the_episodes_not_completed_are_listed_and_the_results_kept_without_output(small_test_set, tmp_path):
    agent = tmp_path / "flaky.py"
    agent.write_text(FLAKY)
    done = flateval("run", "--agent", f"{sys.executable} {agent}", "--test-set", str(small_test_set), "--workers", "1",
                    cwd=tmp_path, env=WIDE)
    assert done.returncode == 0, done.stderr
    path = results_path(done.stderr)
    document = json.loads((tmp_path / path).read_text())
    assert Path(path).name == f"{document['submission_id']}.json"
    lost = [e for e in document["episodes"] if e["outcome"] != "completed"]
    assert [e["env_file"] for e in lost] == ["Test_0/Level_0.pkl", "Test_0/Level_1.pkl"]
    assert all("planner lost train 3" in e["error"] and e["error"].endswith("(step 2)") for e in lost)

    lines = done.stdout.splitlines()
    start = lines.index("not completed: 2 of 4 episodes")
    assert lines[start + 1:start + 3] == [f"  {e['env_file']}  agent_error  {e['error']}" for e in lost]
    assert lines[start + 3] == (f"agent logs (1): \"agent_logs\" in {path}, shown by `flateval report {path}`")
    assert "planner lost train 3" in "".join(document["agent_logs"].values())  # the agent's traceback is kept


def test_only_the_first_few_are_listed():
    episodes = [{"env_file": f"Test_{i}/Level_0.pkl", "outcome": "timeout", "error": f"no reply\nat {i}"}
                for i in range(7)] + [{"env_file": "Test_9/Level_0.pkl", "outcome": "completed", "error": None}]
    lines = not_completed_lines({"episodes": episodes})
    assert lines[0] == "not completed: 7 of 8 episodes"
    assert lines[1:6] == [f"  Test_{i}/Level_0.pkl  timeout  no reply at {i}" for i in range(5)]
    assert lines[6] == "  ... and 2 more: every episode's error is in the results"
    assert not_completed_lines({"episodes": episodes[-1:]}) == []


def test_results_that_cannot_go_where_asked_still_land_somewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    document = {"submission_id": "s1", "episodes": []}
    path, problem = save_results(document, str(tmp_path / "a_file" / "results.json"))
    assert path == Path(RESULTS_DIR) / "s1.json" and json.loads(path.read_text()) == document
    assert problem.startswith(f"cannot write {tmp_path / 'a_file' / 'results.json'}: ")
    path, problem = save_results(document, "here.json")
    assert (path, problem) == (Path("here.json"), None) and json.loads(path.read_text()) == document
