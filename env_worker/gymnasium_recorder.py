"""One Gymnasium episode as a JSON-lines file: the seed, every action and every reward (docs/audit.md).

    {"format": "flateval-gymnasium-episode/1", "env_id": "CartPole-v1", "seed": 7, "ep_id": "CartPole-v1_seed_7"}
    {"t": 0, "action": 1, "reward": 1.0, "terminated": false, "done": false}
    ...
    {"end": {"steps": 21, "return": 21.0, "done": true}}

``gymnasium.make(env_id)``, ``reset(seed=seed)`` and the actions in order reproduce the episode:
`env_worker.verify` re-steps it and compares every reward and termination. Actions are written as
JSON (arrays as nested lists, tuples as lists) and read back through the env's action space, as the
agent's replies were. Per step the recorder appends to a list; the file is written at the end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.episode_spec import EpisodeSpec
from env_worker.env_adapter import StepOutcome

KIND = "gymnasium-jsonl"
FORMAT = "flateval-gymnasium-episode/1"
FILE = "episode.jsonl"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class GymnasiumRecorder:
    kind = KIND

    def __init__(self, folder: Path, adapter: Any, spec: EpisodeSpec) -> None:
        self.path = Path(folder) / FILE
        self.header = {"format": FORMAT, "env_id": adapter.env_id, "seed": adapter.seed, "ep_id": spec.ep_id}
        self.rows: list[tuple] = []
        self.done = False

    def step(self, action: Any, outcome: StepOutcome) -> None:
        self.rows.append((action, outcome.rewards[0], outcome.dones[0], outcome.done))
        self.done = outcome.done

    def finish(self) -> dict[str, Any]:
        total = sum(row[1] for row in self.rows)
        with open(self.path, "w") as fh:
            fh.write(json.dumps(self.header) + "\n")
            for t, (action, reward, terminated, done) in enumerate(self.rows):
                fh.write(json.dumps({"t": t, "action": _jsonable(action), "reward": reward, "terminated": terminated,
                                     "done": done}) + "\n")
            fh.write(json.dumps({"end": {"steps": len(self.rows), "return": total, "done": self.done}}) + "\n")
        steps, self.rows = len(self.rows), []
        return {"steps": steps, "done": self.done, "n_agents": 1, "return": total}


def read_episode(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, steps) of a recorded gymnasium episode; `ValueError` if the file is not one."""
    lines = (Path(folder) / FILE).read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    if not rows or rows[0].get("format") != FORMAT or "end" not in rows[-1]:
        raise ValueError(f"{FILE} is not a complete {FORMAT} file")
    return rows[0], rows[1:-1]

