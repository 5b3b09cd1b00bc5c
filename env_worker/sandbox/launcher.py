"""The program between a worker and its agent: it builds the agent's fences, then runs its command.

Run as ``python -I -S launcher.py CONFIG`` (CONFIG: a dict, marshal-encoded, in hex), with the
agent's allowlisted environment, its log as stdout/stderr and a status pipe at ``status_fd``. It
imports only C modules and ctypes (no json, socket or signal: their enums alone would double its
~15 ms start-up).

1. it dies with the worker (``PR_SET_PDEATHSIG``, checked against the worker's pid, so a worker
   killed between fork and prctl is noticed too);
2. it unshares the namespaces the machine allows: pid, mount, ipc, uts and, unless the agent must
   listen on TCP, network (bringing up the namespace's own loopback). As root nothing else is
   needed; otherwise it tries a user namespace mapping only its own uid;
3. it forks the agent's init, PID 1 of the new pid namespace, with a parent-death signal: when the
   launcher dies (stopped, or killed with its worker) the init dies, and the kernel kills every
   process of the namespace with it, however deep or detached. No cleanup pass is involved;
4. the init mounts its own /proc, hides the test set, the run directory, /run and the other agents'
   directories, gives /dev/shm a private tmpfs, joins the agent's cgroups, sets its rlimits and CPU
   affinity, drops to the agent's uid, forbids new privileges, writes what it achieved (a marshalled
   dict) to the status pipe and execs ``/bin/sh -c COMMAND`` in the agent's private directory.

The launcher waits for the init and leaves with its status (a signal death as the same signal), so
the worker's view of "the agent process" is unchanged. SIGTERM, SIGINT or SIGHUP to the launcher are
passed on to the agent, which gets `STOP_GRACE_S` to end on its own (a script's last words, its
`submit()`); then the whole namespace is killed. An agent that ignores the stop gains nothing: the
worker SIGKILLs the launcher's group after its own, shorter grace, and the namespace dies with it. Everything that
cannot be had here is reported with its reason; only a failure to drop to the agent's uid is fatal.

`die_with_parent` gives the same lifeline to processes of flateval's own (a worker started by
``flateval run``).
"""

from __future__ import annotations

import _signal as signal
import ctypes
import fcntl
import marshal
import os
import select
import struct
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
FATAL_EXIT = 125
STOP_GRACE_S = 5
"""After a stop signal, how long the agent may take to end on its own before its namespace is killed
(the worker's own grace, `AgentProcess.stop`, is shorter: this is the backstop)."""
LIFELINE_ENV = "FLATEVAL_LIFELINE_PID"
"""Set by `flateval run` for its workers: the pid whose death must end them (`die_with_parent`)."""

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(OSError):
    """A step that failed; its message is one line naming the step."""


def _call(what: str, result: int) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise SetupError(code, f"{what}: {os.strerror(code)}")


def _prctl(option: int, value: int) -> None:
    _call(f"prctl({option})", _libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = lambda s: s.encode() if s is not None else None  # noqa: E731
    _call(f"mount {target}", _libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags),
                                         encode(data)))


def die_with_parent(parent: int, signum: int = signal.SIGKILL) -> None:
    """Get `signum` (default SIGKILL) when `parent` (our parent now) dies; exit at once if it already has."""
    _prctl(PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent:
        os._exit(FATAL_EXIT)


# ------------------------------------------------------------------------------------ namespaces

def _unshare(flags: int) -> None:
    _call("unshare", _libc.unshare(ctypes.c_int(flags)))


def _map_own_ids(uid: int, gid: int) -> None:
    """In a fresh user namespace: keep our uid and gid, read before it (inside, unmapped, they read
    as the overflow id), the one mapping a process may write for itself."""
    for path, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{path}", "w") as fh:
            fh.write(text)


def unshare_namespaces(network: bool, may_use_userns: bool, on: dict, off: dict) -> int:
    """Unshare what the machine allows; returns the flags in force, noting each in `on`/`off`."""
    wanted = {"pidns": CLONE_NEWPID, "mountns": CLONE_NEWNS, "ipcns": CLONE_NEWIPC | CLONE_NEWUTS}
    if network:
        wanted["netns"] = CLONE_NEWNET
    every = sum(wanted.values())
    try:
        _unshare(every)
        got, how = every, ""
    except SetupError:
        got, how = 0, ""
        if may_use_userns:
            uid, gid = os.getuid(), os.getgid()
            try:
                _unshare(every | CLONE_NEWUSER)
            except SetupError:
                pass
            else:  # an OSError here is fatal: in an unmapped namespace no file can be made
                _map_own_ids(uid, gid)
                got, how = every, "user namespace"
        if not got:
            for name, flag in wanted.items():
                try:
                    _unshare(flag)
                    got |= flag
                except SetupError as one:
                    off[name] = f"unshare: {one.strerror}"
    for name, flag in wanted.items():
        if got & flag:
            on[name] = how
    if got & CLONE_NEWNET:
        try:
            _loopback_up()
        except OSError as exc:
            on["netns"] = f"loopback down: {exc.strerror}"
    return got


def _loopback_up() -> None:
    """The new network namespace's own loopback, for agents that talk to themselves over it."""
    sock = _libc.socket(2, 2, 0)  # AF_INET, SOCK_DGRAM
    if sock < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    try:
        request = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))
    finally:
        os.close(sock)


# ------------------------------------------------------------------------------------ the init

def _bind_only(directory: str, names: set[str]) -> None:
    """Cover `directory` with an empty read-only tmpfs that shows only `names`, bound back in."""
    kept = {}
    for name in names:
        try:
            kept[name] = os.open(os.path.join(directory, name), os.O_PATH)
        except OSError:
            continue
    try:
        _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0711,size=16k")
        for name, fd in kept.items():
            inside = os.path.join(directory, name)
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.mkdir(inside, 0o711)
            else:
                os.close(os.open(inside, os.O_CREAT | os.O_WRONLY, 0o600))
            _mount(f"/proc/self/fd/{fd}", inside, None, MS_BIND | MS_REC)
        _mount(None, directory, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    except OSError:
        _libc.umount2(directory.encode(), MNT_DETACH)
        raise
    finally:
        for fd in kept.values():
            os.close(fd)


def _blockers(targets: list[str]) -> dict[str, set[str]]:
    """Directories on the way to `targets` that a user with no relation to their owners cannot
    pass (no x for others, like a 0700 /root holding the Python installation), each with the
    names of its children on the way."""
    found: dict[str, set[str]] = {}
    for target in targets:
        parts = target.rstrip("/").split("/")[1:]
        for depth in range(len(parts)):
            directory = "/" + "/".join(parts[:depth])
            try:
                passable = os.stat(directory).st_mode & 0o001
            except OSError:
                break
            if not passable:
                found.setdefault(directory, set()).add(parts[depth])
    return found


def private_mounts(config: dict, pidns: bool, on: dict, off: dict) -> None:
    """Our own /proc; the agent's Python and files reachable (for its own uid); the agents' parent
    directory showing only this agent's; hidden paths; a private /dev/shm. Mount propagation is cut
    first, so nothing here is seen outside."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    hidden, reachable = [], []
    if pidns:
        try:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            hidden.append("others' /proc")
        except SetupError as exc:
            off["proc"] = exc.strerror
    targets = config.get("reachable") or []
    for directory, names in sorted(_blockers(targets).items(), key=lambda item: item[0].count("/")):
        try:
            _bind_only(directory, names)
            reachable.extend(os.path.join(directory, name) for name in sorted(names))
        except OSError as exc:
            off.setdefault("reachable", f"{directory}: {exc.strerror}")
    parent, own = config["agents_dir"], config["own_dir"]
    _bind_only(parent, {os.path.basename(own)})
    hidden.append("other agents")
    for path in config["hide"]:  # none holds the agent's own files: the worker refuses to start it then
        try:
            if os.path.isdir(path):
                _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=000,size=4k")
            elif os.path.exists(path):
                _mount("/dev/null", path, None, MS_BIND)
            else:
                continue
            hidden.append(path)
        except SetupError as exc:
            off.setdefault("hide", f"{path}: {exc.strerror}")
    try:
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    except SetupError as exc:
        off["shm"] = exc.strerror
    on["mounts"] = "hidden: " + ", ".join(hidden) + ("; reachable: " + ", ".join(reachable) if reachable else "")


def join_cgroups(procs_files: list[str], on: dict, off: dict) -> None:
    """Move ourselves (pid "0": whoever writes) into the agent's cgroups: all we fork follows."""
    failed = []
    for path in procs_files:
        try:
            with open(path, "w") as fh:
                fh.write("0")
        except OSError as exc:
            failed.append(f"{path}: {exc.strerror}")
    if failed:
        off["cgroups"] = "; ".join(failed)
    else:
        on["cgroups"] = len(procs_files)


def limit_resources(config: dict, on: dict, off: dict) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no memory image behind
    for name, value in (config.get("rlimits") or {}).items():
        try:
            resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (value, value))
            on[f"rlimit_{name.lower()}"] = value
        except (OSError, ValueError) as exc:
            off[f"rlimit_{name.lower()}"] = str(exc)
    cpus = config.get("cpus")
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)
            on["affinity"] = sorted(os.sched_getaffinity(0))
        except OSError as exc:
            off["affinity"] = exc.strerror


def drop_privileges(config: dict, on: dict) -> None:
    uid, gid = config.get("uid"), config.get("gid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        on["user"] = uid
    _prctl(PR_SET_NO_NEW_PRIVS, 1)  # no setuid binary gives anything back


def run_init(config: dict, flags: int, lifeline: int, status: int, on: dict, off: dict) -> None:
    """PID 1 of the agent's namespaces: fence in, report, become the agent's shell. Never returns."""
    try:
        if flags & CLONE_NEWNS:
            try:
                private_mounts(config, bool(flags & CLONE_NEWPID), on, off)
            except OSError as exc:
                off["mounts"] = exc.strerror or str(exc)
        if flags & CLONE_NEWUTS:
            _call("sethostname", _libc.sethostname(b"agent", 5))
        join_cgroups(config["cgroup_procs"], on, off)
        limit_resources(config, on, off)
        drop_privileges(config, on)
        # after the uid change, which clears it; the pipe tells a launcher that died before this
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([lifeline], [], [], 0)[0]:
            os._exit(FATAL_EXIT)
        os.chdir(config["home"])
        on["pid1"] = os.getpid() == 1
    except OSError as exc:
        os.write(status, marshal.dumps({"error": f"sandbox: {exc.strerror or exc}"}))
        os._exit(FATAL_EXIT)
    os.write(status, marshal.dumps({"on": on, "off": off}))
    try:
        os.execve("/bin/sh", ["sh", "-c", config["command"]], dict(os.environ))
    except OSError as exc:
        os.write(2, f"flateval sandbox: cannot run /bin/sh: {exc.strerror}\n".encode())
        os._exit(FATAL_EXIT)


# ------------------------------------------------------------------------------------ the launcher

def _wait(child: int) -> int:
    while True:
        try:
            return os.waitpid(child, 0)[1]
        except InterruptedError:
            continue


def main(argv: list[str]) -> None:
    config = marshal.loads(bytes.fromhex(argv[1]))
    status = config["status_fd"]
    os.set_inheritable(status, False)  # closed by the agent's exec: EOF tells the worker it ran
    die_with_parent(config["parent"])
    on: dict = {}
    off: dict = {}
    try:
        flags = unshare_namespaces(config["network"], may_use_userns=config.get("uid") is None, on=on, off=off)
    except OSError as exc:
        os.write(status, marshal.dumps({"error": f"sandbox: user namespace: {exc.strerror or exc}"}))
        os._exit(FATAL_EXIT)
    lifeline_read, lifeline_write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(lifeline_write)
        run_init(config, flags, lifeline_read, status, on, off)
    os.close(lifeline_read)
    os.close(status)

    def kill(signum: int, frame: object) -> None:
        try:
            os.kill(child, signal.SIGKILL)  # PID 1 of the namespace: every process in it dies with it
        except ProcessLookupError:
            pass

    def stop(signum: int, frame: object) -> None:
        """Pass the stop on to the agent (a script may say its last words, and a FlatlandRemoteClient
        script does: `submit()`), then give it `STOP_GRACE_S` before the namespace is killed."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        try:
            os.killpg(os.getpgid(0), signal.SIGTERM)  # the agent's shell is PID 1 there: only its children hear it
        except OSError:
            pass
        signal.signal(signal.SIGALRM, kill)
        signal.alarm(STOP_GRACE_S)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    result = _wait(child)
    if os.WIFSIGNALED(result):
        sig = os.WTERMSIG(result)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(result) if os.WIFEXITED(result) else FATAL_EXIT)


if __name__ == "__main__":
    main(sys.argv)
