"""Run untrusted Python (model-written code) in a separate, constrained process.

The parent starts a small launcher, ``python -I -S -B -c _LAUNCHER``, which confines itself and
then executes the candidate file in its own interpreter. Everything is set up by the launcher
rather than in a ``preexec_fn``, which is documented as unsafe when the parent has threads (the
pipeline verifies from thread pools). ``-I -S`` make only the standard library importable and
ignore PYTHON* variables; ``-B`` keeps the interpreter from writing bytecode.

Layers, outermost first:

* The parent: a stripped environment, stdin from /dev/null, a fresh temporary directory as the
  working directory (removed afterwards), a new session so that a wall-clock timeout kills the
  whole process group, and stdout/stderr read from pipes of which only the last
  ``OUTPUT_BYTES`` are kept (the rest is read and dropped, so a chatty child neither blocks nor
  fills the parent's memory).
* The jail, when we are root and the kernel allows it (see ``isolation()``): new network and
  mount namespaces (no network at all: not even loopback is up); ``HIDDEN_DIRS`` (homes,
  temporary directories, /run) covered by empty root-owned tmpfs mounts, with the interpreter's
  prefix bind-mounted back read-only where it lay under one of them (pyenv puts it in /root);
  the working directory a fresh size-limited tmpfs; no-new-privileges; and a uid of its own
  that no account uses (``UID_BASE`` + the launcher's pid). So the candidate can write nowhere
  but its working directory, cannot read files that are not world-readable, cannot signal other
  processes (other sandboxes included) and, with RLIMIT_NPROC at 1, cannot fork or start a
  thread. RLIMIT_NPROC does not bind root: that is why the uid is dropped. It can still exec a
  program, which runs under the same uid, limits and namespaces and gains no privileges.
* rlimits: CPU seconds, address space, size of any file written, open files, no core dumps,
  process count.
* An audit hook (``sys.addaudithook``) installed just before the candidate runs: process
  creation, signals, sockets, ctypes and gc introspection are refused; files may be written only
  inside the working directory (and /dev/null), and read only there and under the interpreter's
  prefix. A refusal ends the process at once (it cannot be caught). Audit hooks are not a
  security boundary on their own (in-process code can subvert them); they are what contains a
  candidate where the jail is unavailable (not root, or a container without CAP_SYS_ADMIN), and
  they give clean "forbidden" verdicts where it is.

Not covered: /proc shows other processes' command lines; world-readable files outside
``HIDDEN_DIRS`` (e.g. the code base) stay readable in the jail unless the audit hook stops them.

Linux only (rlimits, namespaces, pidfd).
"""

from __future__ import annotations

import json
import logging
import math
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

MEMORY_BYTES = 512 * 1024 * 1024  # RLIMIT_AS
FILE_BYTES = 8 * 1024 * 1024  # RLIMIT_FSIZE: the largest file the candidate may write
WORKDIR_BYTES = 64 * 1024 * 1024  # size of the jail's tmpfs working directory
OUTPUT_BYTES = 64 * 1024  # kept from the end of stdout and of stderr: tracebacks and end markers come last
OPEN_FILES = 64
# Far above the uid ranges that distributions, systemd and container runtimes hand out.
UID_BASE = 0x7000_0000
HIDDEN_DIRS = ("/home", "/root", "/tmp", "/var/tmp", "/dev/shm", "/run", "/mnt", "/media", "/srv", "/opt")
# After the child has exited and its group was killed, how long to wait for its pipes to close.
_DRAIN_S = 1.0

STATUSES = ("ok", "syntax_error", "wrong_answer", "timeout", "out_of_memory", "crash", "forbidden", "runtime_error")
# The launcher reports these outcomes by exit status; a candidate's own exit with one of these is
# remapped to 1 (a plain failure), except through os._exit, which can only make it fail anyway.
_EXIT_STATUS = {"syntax_error": 201, "wrong_answer": 202, "out_of_memory": 203, "forbidden": 204, "runtime_error": 205}
_SETUP_FAILED = 200
_STATUS_BY_EXIT = {code: status for status, code in _EXIT_STATUS.items()}

log = logging.getLogger(__name__)


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up: not the candidate's fault, so never a verdict."""


@dataclass(frozen=True)
class SandboxResult:
    """``status`` is one of ``STATUSES``:

    ok: exit status 0 (not proof that the program ran to its end: callers check a marker);
    syntax_error: the source does not compile; wrong_answer: an uncaught AssertionError;
    timeout: the wall-clock limit (or the CPU limit) ran out; out_of_memory: an uncaught
    MemoryError (the address-space limit); forbidden: the audit hook refused an operation, or an
    uncaught PermissionError (the kernel refused the jail's uid); runtime_error: any other
    uncaught exception; crash: a non-zero exit or death by a signal.
    """

    status: str
    stdout: str
    stderr: str
    returncode: int


# The launcher: runs as the child's main program with the config as JSON in sys.argv[1]. It
# reads the candidate, confines itself (jail, rlimits, uid, audit hook), compiles and executes it,
# and reports the outcome as an exit status. Names are kept out of the candidate's globals: it
# runs in a fresh namespace.
_LAUNCHER = r'''
import json, os, resource, sys, traceback

CFG = json.loads(sys.argv[1])
_exit = os._exit  # bound now: the candidate may replace os._exit
WORK = CFG["workdir"]
SCRIPT = os.path.join(WORK, "main.py")
EXIT = CFG["exit"]


def finish(status):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    _exit(status)


def jail(source, uid):
    import ctypes

    CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
    MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
    PR_SET_NO_NEW_PRIVS = 38
    libc = ctypes.CDLL(None, use_errno=True)

    def check(rc, what):
        if rc != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def mount(src, target, fstype, flags, data):
        args = [None if a is None else a.encode() for a in (src, target, fstype, data)]
        check(libc.mount(args[0], args[1], args[2], ctypes.c_ulong(flags), args[3]), f"mount {target}")

    check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)  # nothing below propagates to the host
    prefix = os.path.realpath(sys.base_prefix)
    prefix_fd = os.open(prefix, os.O_PATH)  # still names the prefix once a tmpfs covers its path
    hidden = [d for d in CFG["hidden"] if os.path.isdir(d) and not os.path.islink(d)]
    for d in hidden:
        mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=755")
    if any(prefix == d or prefix.startswith(d + "/") for d in hidden):
        os.makedirs(prefix, exist_ok=True)
        mount(f"/proc/self/fd/{prefix_fd}", prefix, None, MS_BIND | MS_REC, None)
        mount(None, prefix, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    os.close(prefix_fd)
    os.makedirs(WORK, exist_ok=True)
    mount("tmpfs", WORK, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={CFG['workdir_bytes']},mode=700,uid={uid},gid={uid}")
    with open(SCRIPT, "wb") as f:
        f.write(source)
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl")
    # Unloaded so that the candidate's import of ctypes raises an audit event (refused).
    for name in [m for m in sys.modules if m in ("ctypes", "_ctypes") or m.startswith("ctypes.")]:
        del sys.modules[name]


def set_limits():
    cpu = CFG["cpu_s"]
    # SIGXCPU at the soft limit (reported as a timeout), SIGKILL a second later if it is ignored.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for name, value in (("RLIMIT_AS", CFG["memory_bytes"]), ("RLIMIT_FSIZE", CFG["file_bytes"]),
                        ("RLIMIT_NOFILE", CFG["open_files"]), ("RLIMIT_CORE", 0), ("RLIMIT_NPROC", 1)):
        resource.setrlimit(getattr(resource, name), (value, value))


def audit_hook(readable):
    refused = frozenset({
        "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.startfile",
        "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit",
        "resource.prlimit", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
        "os.setxattr", "os.removexattr",
    })
    refused_prefixes = ("socket.", "ctypes.")
    refused_imports = frozenset({"ctypes", "_ctypes", "_posixsubprocess"})
    # Events that change the file system, with how many trailing dir_fd arguments they carry.
    changes = {"os.remove": 1, "os.rename": 2, "os.rmdir": 1, "os.mkdir": 1, "os.symlink": 1,
               "os.link": 2, "os.truncate": 0, "os.chmod": 1, "os.chown": 1, "os.utime": 1}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    writable = [os.path.realpath(WORK), os.devnull]
    realpath, fsdecode, write = os.path.realpath, os.fsdecode, os.write  # bound before the candidate runs

    def inside(path, roots):
        p = fsdecode(realpath(path))
        return any(p == r or p.startswith(r + "/") for r in roots)

    def refuse(event, args):
        try:
            detail = repr(args)[:200]
        except BaseException:
            detail = "..."
        write(2, f"sandbox: forbidden: {event} {detail}\n".encode("utf-8", "replace"))
        _exit(EXIT["forbidden"])

    def hook(event, args):
        if event in refused or event.startswith(refused_prefixes):
            refuse(event, args)
        elif event == "import":
            if args[0] in refused_imports:
                refuse(event, args)
        elif event == "open":
            path, mode, flags = args
            if isinstance(path, int):  # an already-open descriptor
                return
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(flags & write_flags)
            if not inside(path, writable if writing else readable):
                refuse(event, args)
        elif event in changes:
            n_fds = changes[event]
            paths, dir_fds = args[: len(args) - n_fds], args[len(args) - n_fds :]
            if any(fd not in (None, -1) for fd in dir_fds):  # relative to a directory we cannot see
                refuse(event, args)
            if not all(inside(p, writable) for p in paths if isinstance(p, (str, bytes, os.PathLike))):
                refuse(event, args)

    return hook


def run(source):
    try:
        code = compile(source, SCRIPT, "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: NUL bytes in the source
        traceback.print_exception(type(e), e, None)
        finish(EXIT["syntax_error"])
    if CFG["audit"]:
        sys.addaudithook(audit_hook([os.path.realpath(WORK), os.path.realpath(sys.base_prefix), os.devnull]))
    try:
        exec(code, {"__name__": "__main__", "__file__": SCRIPT, "__builtins__": __builtins__})
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            status = (e.code or 0) & 0xFF
        else:
            print(e.code, file=sys.stderr)
            status = 1
        finish(1 if status in EXIT.values() else status)
    except BaseException as e:
        try:
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # without the launcher's frame
        except BaseException:
            pass
        for kind, status in ((AssertionError, "wrong_answer"), (MemoryError, "out_of_memory"), (PermissionError, "forbidden")):
            if isinstance(e, kind):
                finish(EXIT[status])
        finish(EXIT["runtime_error"])
    finish(0)


def main():
    with open(SCRIPT, "rb") as f:
        source = f.read()
    try:
        if CFG["jail"]:
            uid = CFG["uid_base"] + os.getpid()
            jail(source, uid)
            set_limits()
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        else:
            set_limits()
    except BaseException as e:
        print(f"sandbox setup failed: {e!r}", file=sys.stderr)
        finish(CFG["setup_failed"])
    # Closed before the candidate runs, so that only the launcher can say that setup succeeded.
    os.write(CFG["ready_fd"], b"1")
    os.close(CFG["ready_fd"])
    os.chdir(WORK)  # in the jail: the tmpfs now mounted over the path
    sys.argv = [SCRIPT]
    run(source)


main()
'''


def run_sandboxed(source: str, timeout_s: float = 5.0) -> SandboxResult:
    """Run ``source`` as a script under the limits above and report how it ended."""
    return _run(source, timeout_s, jail=isolation() == "jail", audit_hook=True)


_isolation_lock = threading.Lock()
_isolation: str | None = None


def isolation() -> str:
    """"jail" where the namespaces, mounts and uid change work (root on Linux with the needed
    capabilities), else "audit-hook" (rlimits and the audit hook only). Probed once per process
    by jailing an empty program."""
    global _isolation
    with _isolation_lock:
        if _isolation is None:
            _isolation = "audit-hook"
            if sys.platform == "linux" and os.geteuid() == 0:
                try:
                    probe = _run("", 10.0, jail=True, audit_hook=True)
                    problem = "" if probe.status == "ok" else f"{probe.status}: {probe.stderr.strip()}"
                except SandboxError as e:
                    problem = str(e)
                if problem:
                    log.warning("sandbox: no jail, falling back to the audit hook alone (%s)", problem)
                else:
                    _isolation = "jail"
        return _isolation


def _run(source: str, timeout_s: float, *, jail: bool, audit_hook: bool) -> SandboxResult:
    """``run_sandboxed`` with the layers chosen: tests switch one off to check that the other
    holds by itself."""
    with tempfile.TemporaryDirectory(prefix="sandbox-") as tmp:
        work = os.path.realpath(tmp)
        with open(os.path.join(work, "main.py"), "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(source)  # a lone surrogate does not decode in the child: a syntax_error, not our crash
        ready_r, ready_w = os.pipe()
        try:
            config = {
                "workdir": work, "jail": jail, "audit": audit_hook, "cpu_s": math.ceil(timeout_s) + 1,
                "memory_bytes": MEMORY_BYTES, "file_bytes": FILE_BYTES, "workdir_bytes": WORKDIR_BYTES,
                "open_files": OPEN_FILES, "uid_base": UID_BASE, "hidden": HIDDEN_DIRS,
                "exit": _EXIT_STATUS, "setup_failed": _SETUP_FAILED, "ready_fd": ready_w,
            }
            with subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", "-c", _LAUNCHER, json.dumps(config)],
                cwd=work,
                env={"PATH": "/usr/bin:/bin", "TMPDIR": work},  # TMPDIR: tempfile works inside the workdir
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(ready_w,),
                start_new_session=True,
            ) as proc:
                os.close(ready_w)
                ready_w = -1
                stdout, stderr, timed_out = _collect(proc, timeout_s)
            # Popen's exit has reaped the launcher, and its group is dead: the pipe is at its end.
            ready = os.read(ready_r, 1) == b"1"
        finally:
            os.close(ready_r)
            if ready_w >= 0:
                os.close(ready_w)
    out, err = (b.decode("utf-8", "replace") for b in (stdout, stderr))
    if not ready and proc.returncode == _SETUP_FAILED:
        raise SandboxError(err.strip())
    return SandboxResult(_classify(proc.returncode, timed_out), out, err, proc.returncode)


def _collect(proc: subprocess.Popen, timeout_s: float) -> tuple[bytes, bytes, bool]:
    """Read stdout and stderr (keeping each one's last OUTPUT_BYTES) until the child exits or the
    deadline passes, kill its process group, then read what is left. Returns (out, err, timed_out).

    The exit is watched through a pidfd, which does not reap the child: its pid, and so its
    process-group id, cannot be reused before the group is killed. The group is killed on errors
    too, since Popen's exit then waits for the child.
    """
    tails = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    with selectors.DefaultSelector() as sel:
        for fd in tails:
            sel.register(fd, selectors.EVENT_READ)
        try:
            pidfd = os.pidfd_open(proc.pid)
            try:
                sel.register(pidfd, selectors.EVENT_READ)
                exited = _pump(sel, tails, time.monotonic() + timeout_s, exit_fd=pidfd)
                sel.unregister(pidfd)
            finally:
                os.close(pidfd)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever it started in its session goes too
            except ProcessLookupError:
                pass
        _pump(sel, tails, time.monotonic() + _DRAIN_S, exit_fd=None)
    return bytes(tails[proc.stdout.fileno()]), bytes(tails[proc.stderr.fileno()]), not exited


def _pump(sel: selectors.BaseSelector, tails: dict[int, bytearray], deadline: float, exit_fd: int | None) -> bool:
    """Move output into ``tails`` until ``exit_fd`` is readable or, without one, every pipe is at
    its end (True), or until the deadline passes (False)."""
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        for key, _ in sel.select(left):
            if key.fd == exit_fd:
                return True
            chunk = os.read(key.fd, 1 << 16)
            if not chunk:
                sel.unregister(key.fd)
                continue
            tail = tails[key.fd]
            tail += chunk
            del tail[:-OUTPUT_BYTES]
    return True


def _classify(returncode: int, timed_out: bool) -> str:
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == 0:
        return "ok"
    return _STATUS_BY_EXIT.get(returncode, "crash")
