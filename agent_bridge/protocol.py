"""The wire protocol between an env worker (ZeroMQ REQ) and an agent (ZeroMQ REP).

Both sides import this module, so the message shapes live in exactly one place.
`docs/protocol.md` is the language-neutral description of the same thing.

Every frame is one msgpack map with a ``"type"`` key. The env side asks, the agent answers:

=================  =====================================  ===================
request (env)      carries                                reply (agent)
=================  =====================================  ===================
``hello``          protocol version                       ``hello`` (+ wanted observation)
``episode_start``  env facts, deadlines, first obs, info  ``act`` (first actions)
``step``           obs, previous rewards/dones/info       ``act``
``episode_end``    the episode's outcome and score        ``ok``
``aborted``        why the last episode was cut           ``ok``
=================  =====================================  ===================

Any request may instead be answered with ``{"type": "error", "message": ...}``: an agent error.

numpy arrays travel as msgpack ext type 1 (see `pack_ndarray`), so observations cross the socket as
raw buffers without per-element conversion. Nothing is ever unpickled: the env side decodes replies
with ext types refused outright, and both sides only ever see plain msgpack values.
"""

from __future__ import annotations

import struct
from typing import Any, Mapping

import msgpack

# The implementation itself, never `msgpack.packb`/`msgpack.unpackb`: msgpack-numpy's `patch()`
# (which flatland-rl calls on import) replaces those with decoders that `pickle.loads` any map
# shaped like its object arrays. Nothing an agent sends may reach such a decoder.
try:
    from msgpack._cmsgpack import Packer as _Packer
    from msgpack._cmsgpack import unpackb as _unpackb
except ImportError:  # pure-Python msgpack
    from msgpack.fallback import Packer as _Packer
    from msgpack.fallback import unpackb as _unpackb

PROTOCOL_VERSION = 1

NDARRAY_EXT = 1
"""msgpack ext code of an n-dimensional array (see `pack_ndarray`)."""

# Request types (env -> agent).
HELLO = "hello"
EPISODE_START = "episode_start"
STEP = "step"
EPISODE_END = "episode_end"
ABORTED = "aborted"
# Reply types (agent -> env).
ACT = "act"
OK = "ok"
ERROR = "error"

EXPECTED_REPLY = {HELLO: HELLO, EPISODE_START: ACT, STEP: ACT, EPISODE_END: OK, ABORTED: OK}

# Env kinds (``episode_start.env.kind``). Flatland is multi-agent (observations and actions per
# train handle); a gymnasium env has one agent: its observation and its action travel as they are.
KIND_FLATLAND = "flatland"
KIND_GYMNASIUM = "gymnasium"

DEFAULT_MAX_REPLY_BYTES = 1 << 20
"""Cap on one agent reply (ZMQ_MAXMSGSIZE on the env side's socket)."""
DEFAULT_MAX_REQUEST_BYTES = 1 << 30
"""Cap on one env request, set by the agent on its own socket (observations can be large)."""
MAX_ENV_FILE_BYTES = 64 << 20
"""Cap on the env file a replica agent is sent in `episode_start` (Flatland's largest are a few MB)."""


class ProtocolError(ValueError):
    """A frame that does not follow this protocol; its message is one line fit for a user."""


class AgentReportedError(Exception):
    """The agent answered with an ``error`` message (its policy raised)."""


# ----------------------------------------------------------------------------------- encoding


def pack_ndarray(array: Any) -> msgpack.ExtType:
    """Encode a numpy array as ext type 1.

    Layout of the ext data: 1 byte dtype-string length L, L bytes numpy dtype string
    (e.g. ``<f8``), 1 byte ndim D, D little-endian uint32 dimensions, then the C-order bytes.
    """
    import numpy as np  # imported lazily: only needed where arrays are sent

    array = np.ascontiguousarray(array)
    dtype = array.dtype.str.encode("ascii")
    header = struct.pack(f"<B{len(dtype)}sB{array.ndim}I", len(dtype), dtype, array.ndim, *array.shape)
    # One copy, straight from the array's memory (`header + array.tobytes()` made two, and cost 20x
    # as much for a 6 MB global observation).
    return msgpack.ExtType(NDARRAY_EXT, b"".join((header, array.reshape(-1).view(np.uint8))))


def unpack_ndarray(data: bytes) -> Any:
    """Decode the ext data written by `pack_ndarray` (read-only view, no copy)."""
    import numpy as np

    dlen = data[0]
    dtype = data[1 : 1 + dlen].decode("ascii")
    ndim = data[1 + dlen]
    offset = 2 + dlen
    shape = struct.unpack_from(f"<{ndim}I", data, offset)
    offset += 4 * ndim
    if np.dtype(dtype).hasobject:
        raise ProtocolError("object arrays are not allowed on the wire")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


def _default(obj: Any) -> Any:
    if type(obj).__module__ == "numpy":
        if hasattr(obj, "shape") and obj.shape != ():
            return pack_ndarray(obj)
        return obj.item()
    value = getattr(obj, "value", None)  # enums (RailEnvActions, TrainState)
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} over the flateval protocol")


_packer = _Packer(default=_default, use_bin_type=True)


def encode(message: Mapping[str, Any]) -> bytes:
    """One frame for one message."""
    return _packer.pack(message)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"ext type {code} is not allowed in a reply")


def _ndarray_ext(code: int, data: bytes) -> Any:
    if code == NDARRAY_EXT:
        return unpack_ndarray(data)
    return msgpack.ExtType(code, data)


def decode_reply(frame: bytes) -> dict:
    """Decode an agent's reply on the env side: plain msgpack only, a map with a string type."""
    try:
        message = _unpackb(frame, raw=False, strict_map_key=False, ext_hook=_refuse_ext)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several types for bad bytes
        raise ProtocolError(f"reply is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("reply is not a msgpack map with a string 'type'")
    return message


def decode_request(frame: bytes) -> dict:
    """Decode an env request on the agent side (numpy arrays restored)."""
    try:
        message = _unpackb(frame, raw=False, strict_map_key=False, ext_hook=_ndarray_ext)
    except Exception as exc:
        raise ProtocolError(f"request is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("request is not a msgpack map with a string 'type'")
    return message


# ----------------------------------------------------------------------------------- messages


def hello_request() -> dict:
    return {"type": HELLO, "protocol": PROTOCOL_VERSION}


def episode_start_request(*, episode_id: str, env_file: str, seed: int, env: Mapping[str, Any],
                          observation: Mapping[str, Any] | None, planning_s: float | None, step_s: float | None,
                          observations: Any, info: Mapping[str, Any] | None,
                          replica: Mapping[str, Any] | None = None, time_bank_s: float | None = None) -> dict:
    """The first request of an episode: the env's static facts, the deadlines, the first observations;
    in replica mode (section 15 of docs/protocol.md) what the agent's own copy of the env needs instead."""
    deadlines = {"planning_s": planning_s, "step_s": step_s}
    if time_bank_s is not None:
        deadlines["time_bank_s"] = time_bank_s
    message = {"type": EPISODE_START, "episode_id": episode_id, "env_file": env_file, "seed": seed, "env": env,
               "observation": observation, "step": 0, "deadlines": deadlines, "observations": observations,
               "info": info}
    if replica is not None:
        message["replica"] = replica
    return message


def replica_start(env_file_bytes: bytes, rewards: str, reset: bool = True) -> dict:
    """What a replica loads and resets exactly as the env side does: the env file, the rewards class
    (and `episode_start`'s seed); ``reset: false`` when the env is played as saved, without a reset."""
    message = {"env_file_bytes": env_file_bytes, "rewards": rewards}
    if not reset:
        message["reset"] = False
    return message


def step_request(step: int, observations: Any, rewards: Any, dones: Any, info: Mapping[str, Any] | None) -> dict:
    """One step's request: what the previous actions led to; the reply holds the next actions. A
    replica agent gets no observations and no info: it builds its own."""
    message = {"type": STEP, "step": step, "observations": observations, "rewards": rewards, "dones": dones}
    if info is not None:
        message["info"] = info
    return message


def episode_end_request(*, episode_id: str, outcome: str, normalized_return: float | None,
                        percentage_complete: float | None, steps: int, reward: float | None = None,
                        rewards: Any = None, dones: Any = None) -> dict:
    """The episode's result; for a replica, also the last step's rewards and dones to check against."""
    message = {"type": EPISODE_END, "episode_id": episode_id, "outcome": outcome,
               "normalized_return": normalized_return, "percentage_complete": percentage_complete, "steps": steps,
               "reward": reward}
    if rewards is not None:
        message.update(rewards=rewards, dones=dones)
    return message


def aborted_request(episode_id: str, reason: str, normalized_return: float | None = None) -> dict:
    """The notice that `episode_id` was cut, and what it scored; sent at once, or before the env
    side's next request."""
    return {"type": ABORTED, "episode_id": episode_id, "reason": reason, "normalized_return": normalized_return}


def hello_reply(name: str, observation: Mapping[str, Any] | None, replica: bool = False) -> dict:
    """`replica`: the agent keeps its own copy of the env (section 15 of docs/protocol.md)."""
    reply = {"type": HELLO, "protocol": PROTOCOL_VERSION, "name": name, "observation": observation}
    if replica:
        reply["replica"] = True
    return reply


def act_reply(actions: Any) -> dict:
    return {"type": ACT, "actions": actions}


def ok_reply() -> dict:
    return {"type": OK}


ERROR_MESSAGE_CHARS = 2000
"""An agent's error message is kept up to this many characters; the rest is cut."""


def error_reply(message: str) -> dict:
    return {"type": ERROR, "message": message}


def check_reply(request_type: str, reply: dict) -> dict:
    """Raise `ProtocolError` unless `reply` is the right answer to a `request_type` request."""
    kind = reply["type"]
    if kind == ERROR:
        text = reply.get("message")
        raise AgentReportedError(str(text)[:ERROR_MESSAGE_CHARS] if text is not None else "agent reported an error")
    expected = EXPECTED_REPLY[request_type]
    if kind != expected:
        raise ProtocolError(f"expected a '{expected}' reply to '{request_type}', got '{kind[:40]}'")
    if kind == HELLO:
        if type(reply.get("protocol")) is not int or reply["protocol"] != PROTOCOL_VERSION:
            raise ProtocolError(
                f"agent speaks protocol {reply.get('protocol')!r}, this evaluator speaks {PROTOCOL_VERSION}"
            )
        observation = reply.get("observation")
        if observation is not None and not (
            isinstance(observation, dict) and isinstance(observation.get("builder"), str)
        ):
            raise ProtocolError("hello 'observation' must be null or a map with a string 'builder'")
        if type(reply.get("replica", False)) is not bool:
            raise ProtocolError("hello 'replica' must be a boolean")
    return reply


def parse_actions(reply: dict, n_agents: int, n_actions: int) -> dict[int, int]:
    """Validate a multi-agent ``act`` reply: a map of handle -> action, every value in range."""
    actions = reply.get("actions")
    if actions is None:
        return {}
    if not isinstance(actions, dict):
        raise ProtocolError(f"'actions' must be a map of agent handle to action, got {type(actions).__name__}")
    checked: dict[int, int] = {}
    for handle, action in actions.items():
        if type(handle) is not int or not 0 <= handle < n_agents:
            raise ProtocolError(f"unknown agent handle {handle!r} (this env has handles 0..{n_agents - 1})")
        if type(action) is not int:
            raise ProtocolError(f"action for agent {handle} must be an integer, got {type(action).__name__}")
        if not 0 <= action < n_actions:
            raise ProtocolError(f"action {action} for agent {handle} is out of range 0..{n_actions - 1}")
        checked[handle] = action
    return checked


# ----------------------------------------------------------------------------------- single-agent actions

ACTION_SPACE_TYPES = ("Discrete", "Box", "MultiDiscrete", "MultiBinary", "Dict", "Tuple")
"""The action spaces `parse_action` validates (described as plain data, see docs/protocol.md)."""


def parse_action(reply: dict, space: Mapping[str, Any]) -> Any:
    """Validate a single-agent ``act`` reply: its ``actions`` is the action itself, checked against
    `space` (a space description: ``{"type": "Discrete", "n": 2, "start": 0}``, ...). Returns the
    action in the form the env steps with (ints, numpy arrays of the space's dtype, dicts, tuples)."""
    if reply.get("actions") is None:
        raise ProtocolError(f"'actions' must hold the action (a {space.get('type')} action), got nothing")
    return _check_action(reply["actions"], space, "action")


def _check_action(value: Any, space: Mapping[str, Any], where: str) -> Any:
    kind = space.get("type")
    if kind == "Discrete":
        low, high = space["start"], space["start"] + space["n"] - 1
        if type(value) is not int:
            raise ProtocolError(f"{where} must be an integer {low}..{high}, got {_type_name(value)}")
        if not low <= value <= high:
            raise ProtocolError(f"{where} {value} is out of range {low}..{high}")
        return value
    if kind == "Dict":
        spaces = space["spaces"]
        if not isinstance(value, dict) or set(value) != set(spaces):
            raise ProtocolError(f"{where} must be a map with the keys {', '.join(map(str, spaces))}, got "
                                f"{_type_name(value) if not isinstance(value, dict) else sorted(map(str, value))}")
        return {key: _check_action(value[key], sub, f"{where}[{key!r}]") for key, sub in spaces.items()}
    if kind == "Tuple":
        spaces = space["spaces"]
        if not isinstance(value, list) or len(value) != len(spaces):
            got = f"an array of {len(value)}" if isinstance(value, list) else _type_name(value)
            raise ProtocolError(f"{where} must be an array of {len(spaces)} actions, got {got}")
        return tuple(_check_action(v, sub, f"{where}[{i}]") for i, (v, sub) in enumerate(zip(value, spaces)))
    if kind in ("Box", "MultiDiscrete", "MultiBinary"):
        return _check_array(value, space, where)
    raise ProtocolError(f"{where}: this env's action space ({kind}) cannot be validated")


def _check_array(value: Any, space: Mapping[str, Any], where: str) -> Any:
    """Box, MultiDiscrete and MultiBinary actions: nested arrays of numbers of the space's shape."""
    import numpy as np

    kind = space["type"]
    shape = tuple(space["shape"])
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype.kind not in "iuf" or array.shape != shape:
        if array is None or array.dtype.kind == "O":
            got = _type_name(value) if array is None or array.ndim == 0 else "an array of mixed or ragged values"
        elif array.dtype.kind not in "iuf":
            got = {"b": "booleans", "U": "strings", "S": "bytes"}.get(array.dtype.kind, array.dtype.name)
        else:
            got = f"shape {list(array.shape)}"
        raise ProtocolError(f"{where} must be an array of numbers of shape {list(shape)}, got {got}")
    dtype = np.dtype(space["dtype"])
    if dtype.kind in "iu" and array.dtype.kind == "f":
        raise ProtocolError(f"{where} must hold integers ({kind} of {dtype.name}), got floats")
    if kind == "Box":
        low, high = space["low"], space["high"]
    elif kind == "MultiDiscrete":
        low, high = space["start"], space["start"] + space["nvec"] - 1
    else:
        low, high = 0, 1
    inside = (array >= low) & (array <= high)
    if not inside.all():
        bad = tuple(int(i) for i in np.argwhere(~inside)[0])
        lo, hi = (np.broadcast_to(bound, shape)[bad].item() for bound in (low, high))
        raise ProtocolError(f"{where}{list(bad) if bad else ''} = {array[bad].item()!r} is outside the {kind} "
                            f"bounds [{lo}, {hi}]")
    return array.astype(dtype)


def _type_name(value: Any) -> str:
    return "nil" if value is None else type(value).__name__
