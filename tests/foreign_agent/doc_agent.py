"""A flateval agent written only from docs/protocol.md, as an author in another language would.

It deliberately uses nothing but `zmq`, `msgpack`, `numpy` and the standard library: no
`agent_bridge`, `flateval` or `flatland` import. It asks for a depth-1 tree observation, decodes the
ext type 1 arrays itself, and answers MOVE_FORWARD for every train whose `action_required` is true.

What it saw is written as JSON to the file named by $DOC_AGENT_REPORT (if set) at every
`episode_end` and `aborted`, so a test can check that the documented shapes really arrived.
"""

from __future__ import annotations

import json
import os
import struct
import sys

import msgpack
import numpy as np
import zmq

PROTOCOL = 1
MOVE_FORWARD = 2  # docs 10.1
TREE_DEPTH = 1
TREE_FEATURES = 12
REPORT_ENV = "DOC_AGENT_REPORT"


def tree_rows(depth: int) -> int:
    """docs 11.1: R(d) = (4^(d+1) - 1) / 3."""
    return (4 ** (depth + 1) - 1) // 3


# ------------------------------------------------------------------ docs section 3: ext type 1


def decode_ndarray(payload: bytes) -> np.ndarray:
    """L, dtype string, D, D little-endian uint32 dims, C-order elements."""
    dtype_len = payload[0]
    dtype = np.dtype(payload[1 : 1 + dtype_len].decode("ascii"))
    ndim = payload[1 + dtype_len]
    offset = 2 + dtype_len
    shape = struct.unpack_from(f"<{ndim}I", payload, offset)
    offset += 4 * ndim
    count = 1
    for dim in shape:
        count *= dim
    if len(payload) - offset != count * dtype.itemsize:
        raise ValueError(f"ext 1 payload has {len(payload) - offset} element bytes, expected {count * dtype.itemsize}")
    return np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape)


def ext_hook(code: int, data: bytes):
    if code == 1:
        return decode_ndarray(data)
    raise ValueError(f"unexpected ext type {code}")  # docs 2: no other ext type is ever sent


# ------------------------------------------------------------------ the agent


class DocAgent:
    def __init__(self, report_path: str | None) -> None:
        self.report_path = report_path
        self.episode: dict | None = None
        self.episodes: list[dict] = []
        self.hellos = 0

    # docs 4.3: hello reply
    def on_hello(self, request: dict) -> dict:
        self.hellos += 1
        if request.get("protocol") != PROTOCOL:
            return {"type": "error", "message": f"I speak protocol {PROTOCOL}, not {request.get('protocol')!r}"}
        return {"type": "hello", "protocol": PROTOCOL, "name": "doc-agent",
                "observation": {"builder": "tree", "max_depth": TREE_DEPTH}}

    def on_episode_start(self, request: dict) -> dict:
        if self.episode is not None:  # docs 7.2: a new start means the old episode is over
            self.finish(cut="superseded by a new episode_start")
        env = request["env"]
        rail = env["rail"]
        self.episode = {
            "episode_id": request["episode_id"],
            "env_file": request["env_file"],
            "observation": request["observation"],
            "deadlines": request["deadlines"],
            "n_agents": env["n_agents"],
            "n_actions": env["n_actions"],
            "max_episode_steps": env["max_episode_steps"],
            "rail": {"shape": list(rail.shape), "dtype": rail.dtype.str,
                     "matches_grid": list(rail.shape) == [env["height"], env["width"]]},
            "agents_fields": sorted(env["agents"]),
            "obs_shapes": [],
            "obs_dtypes": [],
            "obs_layout_ok": True,
            "root_rows_present": 0,
            "missing_rows": 0,
            "steps_seen": [],
            "forward_actions": 0,
            "action_required_seen": 0,
            "end": None,
            "cut": None,
        }
        return self.act(request)

    def on_step(self, request: dict) -> dict:
        if self.episode is None:
            return {"type": "error", "message": "step outside an episode"}
        self.episode["steps_seen"].append(request["step"])
        for key in ("rewards", "dones"):
            if len(request[key]) != self.episode["n_agents"]:
                return {"type": "error", "message": f"{key} has {len(request[key])} entries"}
        return self.act(request)

    def act(self, request: dict) -> dict:
        episode = self.episode
        self.check_observations(request["observations"])
        info = request["info"]
        actions = {}
        for handle, required in enumerate(info["action_required"]):
            if required:
                actions[handle] = MOVE_FORWARD
        episode["action_required_seen"] += len(actions)
        episode["forward_actions"] += len(actions)
        return {"type": "act", "actions": actions}  # int keys, int values (docs 9)

    def check_observations(self, observations) -> None:
        """docs 11.1: one [R(d), 12] <f8 array per agent; missing nodes all-NaN, present ones NaN-free."""
        episode = self.episode
        if not isinstance(observations, list) or len(observations) != episode["n_agents"]:
            episode["obs_layout_ok"] = False
            return
        for obs in observations:
            shape, dtype = list(obs.shape), obs.dtype.str
            if shape not in episode["obs_shapes"]:
                episode["obs_shapes"].append(shape)
            if dtype not in episode["obs_dtypes"]:
                episode["obs_dtypes"].append(dtype)
            if shape != [tree_rows(TREE_DEPTH), TREE_FEATURES]:
                episode["obs_layout_ok"] = False
                continue
            nan_per_row = np.isnan(obs).sum(axis=1)
            if not np.all((nan_per_row == 0) | (nan_per_row == TREE_FEATURES)):
                episode["obs_layout_ok"] = False  # a row mixing NaN and numbers
            missing = nan_per_row == TREE_FEATURES
            episode["missing_rows"] += int(missing.sum())
            if not missing[0]:
                episode["root_rows_present"] += 1
                # docs 11.1: the root's columns 0-5, 7, 8, 11 are 0; column 10 is its current speed
                if not np.all(obs[0, [0, 1, 2, 3, 4, 5, 7, 8, 11]] == 0) or not 0 <= obs[0, 10] <= 1:
                    episode["obs_layout_ok"] = False

    def on_episode_end(self, request: dict) -> dict:
        if self.episode is not None:
            self.episode["end"] = {k: request.get(k) for k in
                                   ("episode_id", "outcome", "normalized_return", "percentage_complete", "steps")}
            self.finish()
        return {"type": "ok"}

    def on_aborted(self, request: dict) -> dict:
        if self.episode is not None:
            self.finish(cut=str(request.get("reason")))
        return {"type": "ok"}

    def finish(self, cut: str | None = None) -> None:
        self.episode["cut"] = cut
        self.episodes.append(self.episode)
        self.episode = None
        self.write_report()

    def write_report(self) -> None:
        if not self.report_path:
            return
        tmp = self.report_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"hellos": self.hellos, "episodes": self.episodes}, fh)
        os.replace(tmp, self.report_path)

    def handle(self, request) -> dict:
        if not isinstance(request, dict) or not isinstance(request.get("type"), str):
            return {"type": "error", "message": "request is not a map with a string type"}
        handler = {
            "hello": self.on_hello,
            "episode_start": self.on_episode_start,
            "step": self.on_step,
            "episode_end": self.on_episode_end,
            "aborted": self.on_aborted,
        }.get(request["type"])
        if handler is None:
            return {"type": "error", "message": f"unknown request type {request['type']!r}"}
        return handler(request)


def main() -> None:
    endpoint = os.environ.get("FLATEVAL_AGENT_BIND") or "tcp://*:8086"  # docs 1
    agent = DocAgent(os.environ.get(REPORT_ENV))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    print(f"doc agent serving on {endpoint}", file=sys.stderr, flush=True)
    try:
        while True:
            frame = sock.recv()
            try:
                request = msgpack.unpackb(frame, raw=False, strict_map_key=False, ext_hook=ext_hook)
                reply = agent.handle(request)
            except Exception as exc:  # docs 4.3: report a failure instead of running into a deadline
                reply = {"type": "error", "message": f"{type(exc).__name__}: {exc}"}
            sock.send(msgpack.packb(reply, use_bin_type=True))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close(linger=0)
        ctx.term()


if __name__ == "__main__":
    main()
