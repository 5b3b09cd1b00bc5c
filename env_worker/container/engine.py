"""The container engine that runs agent images, through its own CLI (``docker``): found the way that
CLI finds it (``$DOCKER_HOST``, else its context, else the default socket), so flateval uses the
engine the user's own ``docker run`` would. Every failure is one line (`EngineError`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field

CLI_ENV = "FLATEVAL_CONTAINER_CLI"
"""The engine's CLI (default ``docker``); any CLI that speaks docker's commands and flags."""

LABEL = "io.flateval.agent-of"
"""On every agent container: ``<host>:<worker pid>``, so the containers of a killed worker are found
and removed (`remove_orphans`)."""


class EngineError(RuntimeError):
    """No engine, or it refused; the message is one line for the user."""


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass(frozen=True)
class ImageConfig:
    """What an image says of itself (``docker image inspect``): the fences and mounts depend on it."""

    image: str
    image_id: str
    user: str  # "" when the image names none (then it would run as root)
    workdir: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def runs_as_root(self) -> bool:
        name = self.user.split(":", 1)[0]
        return name in ("", "root", "0")


@dataclass(frozen=True)
class Engine:
    cli: str
    name: str  # "Docker Engine", "Podman Engine", ...
    version: str
    endpoint: str  # where its CLI reaches it

    def describe(self) -> str:
        return f"{self.name} {self.version} at {self.endpoint}"

    def run(self, *args: str, timeout_s: float = 30.0, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run one CLI command; `EngineError` (the CLI's last line) when it fails and `check`."""
        try:
            done = subprocess.run([self.cli, *args], capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL, env=env)
        except subprocess.TimeoutExpired:
            raise EngineError(f"{self.cli} {args[0]} did not answer within {timeout_s:g} s") from None
        except OSError as exc:
            raise EngineError(f"cannot run {self.cli}: {exc.strerror or exc}") from None
        if check and done.returncode != 0:
            raise EngineError(_one_line(done.stderr) or f"{self.cli} {args[0]} exited with code {done.returncode}")
        return done

    def image(self, image: str) -> ImageConfig:
        """The image as this engine has it; never pulled (a participant tests what they built)."""
        done = self.run("image", "inspect", image, check=False)
        if done.returncode != 0:
            raise EngineError(f"no image {image} on {self.describe()}: build it (docker build -t {image} .) or load "
                              f"it first")
        try:
            found = json.loads(done.stdout)[0]
            config = found.get("Config") or {}
        except (ValueError, IndexError, AttributeError):
            raise EngineError(f"{self.cli} image inspect {image} said something unreadable") from None
        env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
        return ImageConfig(image, found.get("Id", ""), config.get("User") or "", config.get("WorkingDir") or "/", env)

    def remove_orphans(self, host: str, alive) -> int:
        """Remove the agent containers of this host's dead workers (`alive(pid)` says who lives):
        a worker killed with SIGKILL cannot stop its container. Returns how many."""
        done = self.run("ps", "-a", "--filter", f"label={LABEL}", "--format", f'{{{{.ID}}}} {{{{.Label "{LABEL}"}}}}',
                        check=False)
        dead = []
        for line in done.stdout.splitlines():
            cid, _, owner = line.partition(" ")
            owner_host, _, pid = owner.rpartition(":")
            if owner_host == host and pid.isdigit() and not alive(int(pid)):
                dead.append(cid)
        if dead:
            self.run("rm", "-f", *dead, check=False)
        return len(dead)


def find_engine() -> Engine:
    """The engine the CLI reaches, with its name, version and endpoint; `EngineError` (one line) when
    there is no CLI or no engine answers it."""
    cli = os.environ.get(CLI_ENV) or "docker"
    if shutil.which(cli) is None:
        raise EngineError(f"--agent-image needs a container engine, and there is none here: no {cli} command "
                          f"(install Docker Engine, e.g. Debian's docker.io)")
    probe = Engine(cli, "engine", "", "")
    done = probe.run("version", "--format", "{{json .Server}}", check=False, timeout_s=20)
    server = None
    try:
        server = json.loads(done.stdout) if done.returncode == 0 else None
    except ValueError:
        pass
    endpoint = os.environ.get("DOCKER_HOST") or _context_endpoint(probe) or "unix:///var/run/docker.sock"
    if not server:
        why = _one_line(done.stderr) or "it did not answer"
        raise EngineError(f"--agent-image needs a container engine, and none answered at {endpoint}: {why}")
    platform = (server.get("Platform") or {}).get("Name") or ""
    name = "Podman Engine" if "podman" in platform.lower() else "Docker Engine"
    return Engine(cli, name, server.get("Version", "?"), endpoint)


def _context_endpoint(probe: Engine) -> str:
    done = probe.run("context", "inspect", "--format", "{{.Endpoints.docker.Host}}", check=False, timeout_s=10)
    return done.stdout.strip() if done.returncode == 0 else ""
