"""Run untrusted Python (model-written code) in a separate, constrained process.

The parent starts a small launcher, ``python -I -S -B sandbox_launcher.py <config>``, which confines
itself and then executes the candidate file in its own interpreter. Everything is set up by the launcher
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
from pathlib import Path

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


# The launcher: a script the child runs, confining itself before it executes the candidate.
LAUNCHER = Path(__file__).with_name("sandbox_launcher.py")


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
                [sys.executable, "-I", "-S", "-B", str(LAUNCHER), json.dumps(config)],
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
