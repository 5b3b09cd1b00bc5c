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
   directories, gives the agent its private disk (`private_disk`: one size-capped tmpfs holding its
   home, /tmp, /var/tmp and /dev/shm, gone with the namespace), joins the agent's cgroups, sets its
   rlimits and CPU affinity, drops to the agent's uid, forbids new privileges, writes what it
   achieved (a marshalled dict) to the status pipe and execs ``/bin/sh -c COMMAND`` in the agent's
   private directory.

The agent's stdout and stderr are a pipe the launcher reads (`OutputKeeper`): its log gets the
first `OUTPUT_HEAD_BYTES` and the last `OUTPUT_TAIL_BYTES` and a line counting what was between,
so an agent that prints without end costs no disk. The launcher waits for the init and leaves with its status (a signal death as the same signal), so
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

PLACES = ("/tmp", "/var/tmp", "/dev/shm")
"""The machine's shared writable places: each is the agent's own, a folder of its private disk."""
MAX_CARRIED_BYTES = 1 << 20
"""The largest file of the worker's seed of a home carried into the agent's disk (a font list is ~30 KB)."""
OUTPUT_HEAD_BYTES = 64 * 1024
"""What the agent prints first is kept (its start-up)."""
OUTPUT_TAIL_BYTES = 64 * 1024
"""What it prints last is kept: the results keep its last 10,000 characters, at most 40,000 bytes."""
_DROPPED = (b"\n[flateval] ", b" bytes of the agent's output not kept\n")
KEEP_OUTPUT = "--keep-output"

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
    if config.get("disk"):
        try:
            private_disk(config)
            on["disk"] = [p for p in PLACES if os.path.isdir(p)]
        except OSError as exc:
            off["disk"] = exc.strerror or str(exc)
    on["mounts"] = "hidden: " + ", ".join(hidden) + ("; reachable: " + ", ".join(reachable) if reachable else "")


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _make_path(path: str, is_dir: bool) -> None:
    """A mount point at `path` in the agent's fresh folders: directories 0711 on the way."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        _make_path(parent, True)
    if is_dir:
        os.mkdir(path, 0o711)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def private_disk(config: dict) -> None:
    """One tmpfs of ``disk`` bytes, the agent's whole writable space: its home, its link's folder
    (``own_dir/ipc``: the worker reaches the socket through /proc/<launcher>/root) and the machine's
    /tmp, /var/tmp and /dev/shm are each a folder of it, bind-mounted over the place, so one cap
    covers them all; its pages are charged to the agent's memory cgroup; it lives in the agent's
    mount namespace only and is gone with it. Made at ``own_dir/disk`` (hidden once /tmp is
    covered). What the agent must still see under /tmp or /var/tmp (its own directory, what its
    command names) is bound back in."""
    size, uid, gid = config["disk"], config.get("uid"), config.get("gid")
    staging = os.path.join(config["own_dir"], "disk")
    _mount("tmpfs", staging, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={size},nr_inodes={max(4096, size // 16384)},mode=0700")
    folders = {}
    for name, mode in (("home", 0o700), ("home/tmp", 0o700), ("ipc", 0o700), ("tmp", 0o1777), ("var_tmp", 0o1777),
                       ("shm", 0o1777)):
        path = os.path.join(staging, name)
        os.mkdir(path)
        os.chmod(path, mode)  # past the umask
        if uid is not None and mode == 0o700:
            os.chown(path, uid, gid)
        folders[name] = os.open(path, os.O_PATH)
    _carry(config["home"], os.path.join(staging, "home"), uid, gid)
    keep = [config["own_dir"], *(config.get("keep") or [])]
    keep = sorted({p for p in keep if any(_under(p, place) and p != place for place in PLACES)})
    keep = [p for p in keep if not any(_under(p, other) and p != other for other in keep)]  # outermost only
    kept = {}
    for path in keep:
        try:
            kept[path] = os.open(path, os.O_PATH)
        except OSError:
            continue
    try:
        for place, name in zip(PLACES, ("tmp", "var_tmp", "shm")):
            if os.path.isdir(place):
                _mount(f"/proc/self/fd/{folders[name]}", place, None, MS_BIND)
        for path, fd in kept.items():
            _make_path(path, os.path.isdir(f"/proc/self/fd/{fd}"))
            # its own directory alone (its disk stays hidden), the rest with what is hidden inside
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | (0 if path == config["own_dir"] else MS_REC))
        _mount(f"/proc/self/fd/{folders['home']}", config["home"], None, MS_BIND)
        _mount(f"/proc/self/fd/{folders['ipc']}", os.path.join(config["own_dir"], "ipc"), None, MS_BIND)
    finally:
        for fd in (*folders.values(), *kept.values()):
            os.close(fd)


def _carry(source: str, target: str, uid: int | None, gid: int | None) -> None:
    """What the worker put in the agent's fresh home (`home_seed`: a font list) into its disk, which
    is about to cover it: folders and regular files only, nothing larger than `MAX_CARRIED_BYTES`."""
    try:
        entries = list(os.scandir(source))
    except OSError:
        return
    for entry in entries:
        path = os.path.join(target, entry.name)
        try:
            if entry.is_dir(follow_symlinks=False):
                if not os.path.isdir(path):
                    os.mkdir(path, 0o700)
                    if uid is not None:
                        os.chown(path, uid, gid)
                _carry(entry.path, path, uid, gid)
            elif entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_size <= MAX_CARRIED_BYTES:
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    data = os.read(fd, MAX_CARRIED_BYTES + 1)
                finally:
                    os.close(fd)
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                try:
                    while data:
                        data = data[os.write(out, data):]
                    if uid is not None:
                        os.fchown(out, uid, gid)
                finally:
                    os.close(out)
        except OSError:
            continue  # a seed is a convenience: the agent starts without it


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

class OutputKeeper:
    """An agent's output into its log file: the file's first `OUTPUT_HEAD_BYTES`, a line counting
    what was dropped, and at least its last `OUTPUT_TAIL_BYTES`; never more than head + line + two
    tails. A restart's output continues the same file (the count read back from it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd  # read and write, not O_APPEND: pwrite must go where it is told
        self.size = os.fstat(fd).st_size
        self.dropped, self.line_len = 0, 0
        if self.size > OUTPUT_HEAD_BYTES:
            line = os.pread(fd, 128, OUTPUT_HEAD_BYTES)
            start, end = _DROPPED
            digits = line[len(start):line.find(end)] if line.startswith(start) and end in line else b""
            if digits.isdigit():
                self.dropped, self.line_len = int(digits), len(start) + len(digits) + len(end)

    def write(self, data: bytes) -> None:
        try:
            os.pwrite(self.fd, data, self.size)
            self.size += len(data)
            if self.size > OUTPUT_HEAD_BYTES + self.line_len + 2 * OUTPUT_TAIL_BYTES:
                self._drop_middle()
        except OSError:
            pass  # the host's disk is full: the agent's output is what gives

    def _drop_middle(self) -> None:
        """Head, the count, the last tail: the tail is written before the file is cut, so a reader
        always finds the latest output at its end."""
        tail_at = self.size - OUTPUT_TAIL_BYTES
        tail = os.pread(self.fd, OUTPUT_TAIL_BYTES, tail_at)
        self.dropped += tail_at - OUTPUT_HEAD_BYTES - self.line_len
        line = _DROPPED[0] + str(self.dropped).encode() + _DROPPED[1]
        os.pwrite(self.fd, line + tail, OUTPUT_HEAD_BYTES)
        self.line_len = len(line)
        self.size = OUTPUT_HEAD_BYTES + len(line) + len(tail)
        os.ftruncate(self.fd, self.size)


def relay_output(child: int, source: int, keeper: OutputKeeper) -> None:
    """Copy the agent's output to its log until every writer closed the pipe, or, without a pid
    namespace (where a detached process may hold it open), until the init exited and what it left
    in the pipe is read."""
    try:
        exited = os.pidfd_open(child)
    except (AttributeError, OSError):
        exited = None
    watched = [source] if exited is None else [source, exited]
    while True:
        ready = select.select(watched, [], [], 0.5 if exited is None else None)[0]
        if source in ready:
            data = os.read(source, 65536)
            if not data:
                break
            keeper.write(data)
        elif exited in ready or (exited is None and _exited(child)):
            os.set_blocking(source, False)
            try:
                while data := os.read(source, 65536):
                    keeper.write(data)
            except BlockingIOError:
                pass
            break
    if exited is not None:
        os.close(exited)


def _exited(child: int) -> bool:
    try:
        return os.waitid(os.P_PID, child, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _wait(child: int) -> int:
    while True:
        try:
            return os.waitpid(child, 0)[1]
        except InterruptedError:
            continue


def keep_output() -> None:
    """``launcher.py --keep-output``: our stdin (a pipe an agent's output goes to, one that runs
    without the sandbox or in a container) into our stdout (its log), bounded, until every writer is
    gone."""
    keeper = OutputKeeper(os.open("/proc/self/fd/1", os.O_RDWR))
    while data := os.read(0, 65536):
        keeper.write(data)


def main(argv: list[str]) -> None:
    if argv[1] == KEEP_OUTPUT:
        return keep_output()
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
    log = os.open("/proc/self/fd/1", os.O_RDWR)  # before the init mounts the new pid namespace's /proc
    output_read, output_write = os.pipe()
    lifeline_read, lifeline_write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(lifeline_write)
        os.close(output_read)
        os.close(log)
        os.dup2(output_write, 1)
        os.dup2(output_write, 2)
        os.close(output_write)
        run_init(config, flags, lifeline_read, status, on, off)
    os.close(lifeline_read)
    os.close(status)
    os.close(output_write)

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
    relay_output(child, output_read, OutputKeeper(log))
    result = _wait(child)
    if os.WIFSIGNALED(result):
        sig = os.WTERMSIG(result)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(result) if os.WIFEXITED(result) else FATAL_EXIT)


if __name__ == "__main__":
    main(sys.argv)
