"""What flateval brings into any agent image, read-only: ``agent_bridge`` itself (this checkout's
package, mounted in the image's working directory so ``python -m agent_bridge...`` finds it whatever
the entrypoint does to PYTHONPATH) and its two binary dependencies, pyzmq and msgpack, for every
CPython 3.8-3.13, in one folder.

One folder serves every Python because a compiled module's file name carries its interpreter
(``_zmq.cpython-38-x86_64-linux-gnu.so`` beside ``_zmq.cpython-313-...``) and the pinned releases'
pure-Python files are the same in every wheel: the wheels are unpacked over each other (a file that
would differ is an error, not a silent choice). ``agent_bridge`` puts the folder first on its path
when ``$FLATEVAL_AGENT_DEPS`` names it, so the bridge always runs on the versions tested here.

The folder is prepared once per machine (``flateval agent-deps``, or the first ``--agent-image``
run), from PyPI with ``pip download --only-binary`` or, on a host that is offline, from a folder of
those wheels (``$FLATEVAL_AGENT_WHEELS``) fetched elsewhere; it lives under ``~/.cache/flateval``
(``$FLATEVAL_CACHE_DIR``).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PINS = ("pyzmq==26.2.1", "msgpack==1.1.0")
"""The last releases with wheels for every CPython from 3.8 to 3.13 (manylinux, x86_64 and aarch64)."""

PYTHONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
CACHE_ENV = "FLATEVAL_CACHE_DIR"
WHEELS_ENV = "FLATEVAL_AGENT_WHEELS"
DEPS_ENV = "FLATEVAL_AGENT_DEPS"  # read by agent_bridge/__init__.py inside the container
COMPLETE = ".complete"


class BridgeDepsError(RuntimeError):
    """The folder could not be prepared; one line for the user, saying how to get it offline."""


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flateval"


def _platforms() -> list[str]:
    arch = platform.machine()
    return [f"manylinux2014_{arch}", f"manylinux_2_17_{arch}"]


def bridge_deps_dir(prepare: bool = True, log=lambda line: None) -> Path:
    """The prepared folder (made now if `prepare` and missing; `BridgeDepsError` if it cannot be)."""
    key = hashlib.sha256(" ".join([*PINS, *PYTHONS, *_platforms()]).encode()).hexdigest()[:12]
    target = cache_root() / f"agent-deps-{platform.machine()}-{key}"
    if (target / COMPLETE).exists():
        return target
    if not prepare:
        raise BridgeDepsError(f"{target} is not prepared: run `flateval agent-deps`")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="agent-deps-", dir=target.parent) as work:
        wheels = Path(os.environ[WHEELS_ENV]) if os.environ.get(WHEELS_ENV) else _download(Path(work) / "wheels", log)
        staged = Path(work) / "deps"
        _unpack(sorted(wheels.glob("*.whl")), staged)
        (staged / COMPLETE).write_text(" ".join(PINS) + "\n")
        for path in [staged, *staged.rglob("*")]:  # readable by whatever uid the image runs as
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            staged.rename(target)
        except OSError:  # another process prepared it meanwhile
            if not (target / COMPLETE).exists():
                raise
    return target


def _download(into: Path, log) -> Path:
    log(f"preparing what agent images need ({', '.join(PINS)} for Python {PYTHONS[0]}-{PYTHONS[-1]}): once per "
        f"machine")
    for version in PYTHONS:
        args = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                "--only-binary=:all:", "--implementation", "cp", "--python-version", version, "--dest", str(into)]
        for name in _platforms():
            args += ["--platform", name]
        done = subprocess.run([*args, *PINS], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()
            why = errors[-1].strip() if errors else "pip failed"
            raise BridgeDepsError(
                f"cannot fetch {' '.join(PINS)} for Python {version} from PyPI ({why}); "
                f"offline, fetch them elsewhere with `pip download --only-binary=:all: --python-version {version} "
                f"--platform {_platforms()[0]} {' '.join(PINS)} -d DIR` (each version) and set {WHEELS_ENV}=DIR")
    return into


def _unpack(wheels: list[Path], into: Path) -> None:
    """Every wheel over the same folder, without their metadata; a file that two wheels hold with
    different contents is an error (the one-folder scheme would be wrong for these pins)."""
    wanted = {pin.split("==")[0].lower() for pin in PINS}
    found = {w.name.split("-")[0].lower() for w in wheels}
    if not wanted <= found:
        raise BridgeDepsError(f"no wheels of {', '.join(sorted(wanted - found))} among {len(wheels)} wheels")
    into.mkdir()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                name = member.filename
                if member.is_dir() or ".dist-info/" in name or name.startswith(("/", "..")) or "/../" in name:
                    continue
                data = archive.read(member)
                path = into / name
                if path.exists():
                    if path.read_bytes() != data:
                        raise BridgeDepsError(f"{wheel.name} and an earlier wheel differ in {name}")
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    shutil.rmtree(into / "__pycache__", ignore_errors=True)
