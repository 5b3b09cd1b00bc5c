"""Modules that load at their first use rather than at their import, in the processes flateval
starts around flatland: a bridged agent (before the participant's script runs) and an env worker.

flatland imports ``matplotlib.pyplot`` when it loads its rail env (``rail_env_shortest_paths``, for
a plotting helper): 0.2-0.3 s of every agent's and every worker's start on a 2-core machine, for a
module no evaluation touches. It is deferred with the standard library's `importlib.util.LazyLoader`:
the import binds the module at once and runs it at the first attribute anyone reads, so code that
does use pyplot (a script that plots, a recorded video) gets the real module, only later.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from typing import Iterable, Sequence

DEFERRED = ("matplotlib.pyplot",)


class _DeferringFinder(importlib.abc.MetaPathFinder):
    """Finds the deferred modules as the other finders would, and wraps their loader."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, name: str, path: Sequence[str] | None, target=None) -> importlib.machinery.ModuleSpec | None:
        if name not in self.names:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is None:
                continue
            if spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return None  # not a module LazyLoader can defer (a namespace package): loaded as usual
            spec.loader = importlib.util.LazyLoader(spec.loader)
            return spec
        return None


def defer_imports() -> None:
    """From now on in this process, load the `DEFERRED` modules at their first use. Modules already
    loaded stay as they are; a second call adds nothing."""
    if not any(isinstance(finder, _DeferringFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DeferringFinder(DEFERRED))
