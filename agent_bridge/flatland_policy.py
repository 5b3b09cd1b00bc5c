"""A flatland `Policy` class, unchanged, as a flateval agent, run the way flatland's policy runner runs it.

    python -m agent_bridge.flatland_policy --policy-pkg P --policy-cls C [--obs-builder-pkg P --obs-builder-cls C]
    python -m agent_bridge.flatland_policy --policy pkg.module.Class [--obs-builder pkg.module.Builder]

The options and their environment-variable forms are those of
``flatland-trajectory-generate-from-policy`` (flatland/trajectories/policy_runner.py): ``POLICY``,
``POLICY_PKG``/``POLICY_CLS``, ``OBS_BUILDER``, ``OBS_BUILDER_PKG``/``OBS_BUILDER_CLS``; an option
wins over its variable. As there, the policy and the observation builder are made anew (with no
arguments) for every episode, the default builder is ``TreeObsForRailEnv(max_depth=3,
predictor=ShortestPathPredictorForRailEnv())``, and every step calls
``policy.act_many(env.get_agent_handles(), observations=list(observations.values()))``. The episodes
are played on the local replica of `agent_bridge.flatland_remote`, so the observations are built on
the agent's cores.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from agent_bridge.deferred_imports import defer_imports
from agent_bridge.flatland_remote import FlatlandRemoteClient, TimeoutException


class PolicyNotFound(Exception):
    """A --policy or --obs-builder that does not import; one line for the user."""


def resolve_type(dotted: str | None, pkg: str | None, cls: str | None, what: str) -> type | None:
    """flatland's own `resolve_type` (``pkg.module.Class`` split at its last dot, else pkg and cls), its
    failure one line."""
    from flatland.utils.cli_utils import resolve_type as flatlands

    try:
        return flatlands(dotted, pkg, cls)
    except (ImportError, AttributeError, ValueError) as exc:
        raise PolicyNotFound(f"cannot import the {what} {dotted or f'{pkg}.{cls}'}: {type(exc).__name__}: "
                             f"{exc}") from None


def default_obs_builder() -> Any:
    """The policy runner's default observation builder."""
    from flatland.envs.observations import TreeObsForRailEnv
    from flatland.envs.predictions import ShortestPathPredictorForRailEnv

    return TreeObsForRailEnv(max_depth=3, predictor=ShortestPathPredictorForRailEnv())


def play(client: FlatlandRemoteClient, make_policy: Callable[[], Any], make_obs_builder: Callable[[], Any]) -> int:
    """Play every episode the evaluator sends; return how many."""
    episodes = 0
    while True:
        observations, _ = client.env_create(obs_builder_object=make_obs_builder())
        if observations is False:
            return episodes
        episodes += 1
        policy, env = make_policy(), client.env
        while True:
            actions = policy.act_many(env.get_agent_handles(), observations=list(observations.values()))
            try:
                observations, _, dones, _ = client.env_step(actions)
            except TimeoutException:
                break
            if dones["__all__"]:
                break


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent_bridge.flatland_policy",
                                     description="Serve a flatland Policy class as a flateval agent.")
    for name, var in (("policy", "POLICY"), ("policy-pkg", "POLICY_PKG"), ("policy-cls", "POLICY_CLS"),
                      ("obs-builder", "OBS_BUILDER"), ("obs-builder-pkg", "OBS_BUILDER_PKG"),
                      ("obs-builder-cls", "OBS_BUILDER_CLS")):
        parser.add_argument(f"--{name}", default=os.environ.get(var), help=f"(env: {var})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    defer_imports()  # before flatland loads (agent_bridge.deferred_imports)
    try:
        policy = resolve_type(args.policy, args.policy_pkg, args.policy_cls, "policy")
        if policy is None:
            raise PolicyNotFound("give the policy: --policy pkg.module.Class, or --policy-pkg and --policy-cls")
        builder = resolve_type(args.obs_builder, args.obs_builder_pkg, args.obs_builder_cls, "observation builder")
    except PolicyNotFound as exc:
        print(f"agent_bridge.flatland_policy: {exc}", file=sys.stderr)
        return 2
    client = FlatlandRemoteClient()
    played = play(client, policy, builder or default_obs_builder)
    print(f"[flateval flatland_policy] {played} episodes played; {client.submit()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from agent_bridge.flatland_policy import main as _main  # the importable module's classes, not __main__'s
    from agent_bridge.process_exit import run_then_exit

    run_then_exit(_main)  # no interpreter teardown to wait for (torch's takes half a second)
