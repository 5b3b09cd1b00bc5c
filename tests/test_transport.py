"""The fast paths of the transport: arrays packed from their own memory, large requests sent
without a copy, agents spinning only where a core is free. Real agent processes, real sockets."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from agent_bridge import protocol as wire
from agent_bridge.server import SPIN_ENV
from flateval.local_cluster import AGENT_SPIN_US, agent_spin_env
from env_worker.agent_link import ZERO_COPY_BYTES, AgentLink

DIGEST_AGENT = """
import hashlib
from agent_bridge import serve
class Digest:
    def reset(self, info):
        pass
    def act(self, obs, info):
        digest = hashlib.sha256()
        for array in obs.values():  # per-agent observations arrive keyed by handle
            digest.update(array.dtype.str.encode() + repr(array.shape).encode() + array.tobytes())
        return {i: b for i, b in enumerate(digest.digest()[:8])}
serve(Digest())
"""


def _digest(arrays: list[np.ndarray]) -> dict[int, int]:
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(array.dtype.str.encode() + repr(array.shape).encode() + array.tobytes())
    return dict(enumerate(digest.digest()[:8]))


ARRAYS = {
    "small floats": [np.arange(12, dtype=np.float64).reshape(3, 4)],
    "mixed dtypes": [np.array([[True, False]]), np.arange(5, dtype=np.int16), np.zeros((0, 3)),
                     np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2]],  # a non-contiguous view
    "zero-copy size": [np.random.default_rng(7).random((50, 35, 20, 3))],  # 840 kB: sent without a copy
}


@pytest.mark.parametrize("name", ARRAYS)
def test_arrays_reach_the_agent_bit_for_bit(name, start_agent):
    arrays = ARRAYS[name]
    link = AgentLink(start_agent(script=DIGEST_AGENT).endpoint)
    frame_bytes = len(wire.encode({"type": wire.STEP, "step": 1, "observations": arrays}))
    assert (frame_bytes >= ZERO_COPY_BYTES) == (name == "zero-copy size")
    for step in (1, 2):  # twice: a buffer handed to ZeroMQ must not be reused under it
        reply, _ = link.request({"type": wire.STEP, "step": step, "observations": arrays, "info": {}}, 10.0)
        assert reply["actions"] == _digest(arrays)
    link.close()


def test_agents_spin_only_when_every_process_of_every_pair_has_a_core(monkeypatch):
    monkeypatch.delenv(SPIN_ENV, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert agent_spin_env(1) == {SPIN_ENV: str(AGENT_SPIN_US)}
    assert agent_spin_env(2) == {}
    monkeypatch.setenv(SPIN_ENV, "0")  # the user's setting wins
    assert agent_spin_env(1) == {}
