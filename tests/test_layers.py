"""The layer rule of docs/architecture.md, read from the code: no package imports a package above it.

Every import counts, the lazy ones inside functions too; a module path written as a string counts as
an import (the only one allowed is the RQ job path, which the broker names but never imports).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LAYERS = [  # top first; packages on one floor may not import each other
    ("flateval",),
    ("env_worker",),
    ("broker", "report"),
    ("scoring",),
    ("core", "agent_bridge"),
]
FLOOR = {package: len(LAYERS) - i for i, floor in enumerate(LAYERS) for package in floor}
MODULE_PATH = re.compile(rf"^({'|'.join(FLOOR)})(\.[A-Za-z_][A-Za-z0-9_]*)+$")
ALLOWED_STRING_IMPORTS = {("broker/submit.py", "env_worker.job.run_episode_job")}


def project_modules(root: Path) -> list[Path]:
    return sorted(p for package in FLOOR for p in (root / package).rglob("*.py"))


def names_a_module(root: Path, text: str) -> bool:
    """Whether a dotted string is a module of the project (or a name in one): ``a.b.c`` is a path to
    ``a/b/c.py``, ``a/b/c/``, or ``a/b.py`` holding ``c``. Challenge keys like ``scoring.rewards``
    look the same but name no file."""
    parts = text.split(".")
    base = root.joinpath(*parts)
    if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
        return True
    holder = root.joinpath(*parts[:-1]).with_suffix(".py")
    return holder.is_file() and re.search(rf"^(def|class) {parts[-1]}\b|^{parts[-1]} =", holder.read_text(),
                                          re.MULTILINE) is not None


def imports_of(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement and every module path written as a string."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_PATH.match(node.value) \
                and names_a_module(root, node.value):
            if (path.relative_to(root).as_posix(), node.value) not in ALLOWED_STRING_IMPORTS:
                found.append((node.lineno, node.value))
    return found


def violations(root: Path = REPO) -> list[str]:
    broken = []
    for path in project_modules(root):
        rel = path.relative_to(root)
        own = rel.parts[0]
        for line, module in imports_of(root, path):
            target = module.split(".")[0]
            if target in FLOOR and target != own and FLOOR[target] >= FLOOR[own]:
                where = "above" if FLOOR[target] > FLOOR[own] else "on the same floor as"
                broken.append(f"{rel}:{line} imports {module}, {where} {own}/")
    return broken


def test_no_package_imports_a_package_above_it():
    assert violations() == []


def test_the_rule_catches_upward_sideways_and_string_imports(tmp_path):
    """The check itself, on a small tree of the same packages with arrows planted in it."""
    for package in FLOOR:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "core" / "settings.py").write_text("def late():\n    from broker import store\n")
    (tmp_path / "scoring" / "episode.py").write_text("import agent_bridge\nJOB = 'broker.store.f'\n")
    (tmp_path / "broker" / "store.py").write_text("import core.settings\ndef f(): pass\n")
    (tmp_path / "agent_bridge" / "protocol.py").write_text("from core import settings\n")
    assert violations(tmp_path) == [
        "agent_bridge/protocol.py:1 imports core, on the same floor as agent_bridge/",
        "core/settings.py:2 imports broker, above core/",
        "scoring/episode.py:2 imports broker.store.f, above scoring/",
    ]


def test_the_only_string_named_import_is_the_job_path():
    from broker.submit import JOB_FUNCTION

    assert ("broker/submit.py", JOB_FUNCTION) in ALLOWED_STRING_IMPORTS
    module, _, function = JOB_FUNCTION.rpartition(".")
    import importlib

    assert callable(getattr(importlib.import_module(module), function))
