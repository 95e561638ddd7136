"""The sandbox's child: confines itself, then runs the candidate (see `domains.sandbox` for the layers).

Started as ``python -I -S -B sandbox_launcher.py <config JSON>``: the standard library only, no
site packages, no PYTHON* variables, and not its own directory on the path. It reads the candidate
from ``<workdir>/main.py``, enters the jail (when asked), sets the rlimits, drops to its own uid,
installs the audit hook, compiles and executes the candidate in a fresh namespace (none of the
launcher's names are visible to it), and reports the outcome as an exit status.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

_exit = os._exit  # bound now: the candidate may replace os._exit


def finish(status: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    _exit(status)


def jail(cfg: dict[str, Any], source: bytes, uid: int) -> None:
    """New mount and network namespaces; hidden directories covered; a tmpfs working directory holding the candidate; no new privileges."""
    import ctypes

    CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
    MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
    PR_SET_NO_NEW_PRIVS = 38
    libc = ctypes.CDLL(None, use_errno=True)
    work = cfg["workdir"]

    def check(rc: int, what: str) -> None:
        if rc != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        args = [None if a is None else a.encode() for a in (src, target, fstype, data)]
        check(libc.mount(args[0], args[1], args[2], ctypes.c_ulong(flags), args[3]), f"mount {target}")

    check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)  # nothing below propagates to the host
    prefix = os.path.realpath(sys.base_prefix)
    prefix_fd = os.open(prefix, os.O_PATH)  # still names the prefix once a tmpfs covers its path
    hidden = [d for d in cfg["hidden"] if os.path.isdir(d) and not os.path.islink(d)]
    for d in hidden:
        mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=755")
    if any(prefix == d or prefix.startswith(d + "/") for d in hidden):
        os.makedirs(prefix, exist_ok=True)
        mount(f"/proc/self/fd/{prefix_fd}", prefix, None, MS_BIND | MS_REC, None)
        mount(None, prefix, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    os.close(prefix_fd)
    os.makedirs(work, exist_ok=True)
    mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={cfg['workdir_bytes']},mode=700,uid={uid},gid={uid}")
    with open(os.path.join(work, "main.py"), "wb") as f:
        f.write(source)
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl")
    # Unloaded so that the candidate's import of ctypes raises an audit event (refused).
    for name in [m for m in sys.modules if m in ("ctypes", "_ctypes") or m.startswith("ctypes.")]:
        del sys.modules[name]


def set_limits(cfg: dict[str, Any]) -> None:
    cpu = cfg["cpu_s"]
    # SIGXCPU at the soft limit (reported as a timeout), SIGKILL a second later if it is ignored.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for name, value in (("RLIMIT_AS", cfg["memory_bytes"]), ("RLIMIT_FSIZE", cfg["file_bytes"]),
                        ("RLIMIT_NOFILE", cfg["open_files"]), ("RLIMIT_CORE", 0), ("RLIMIT_NPROC", 1)):
        resource.setrlimit(getattr(resource, name), (value, value))


def audit_hook(cfg: dict[str, Any], readable: Sequence[str]) -> Callable[[str, tuple], None]:
    """Refuses process creation, signals, sockets, ctypes and gc introspection; writes outside the workdir; reads outside `readable`."""
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
    writable = [os.path.realpath(cfg["workdir"]), os.devnull]
    forbidden = cfg["exit"]["forbidden"]
    realpath, fsdecode, write = os.path.realpath, os.fsdecode, os.write  # bound before the candidate runs

    def inside(path: Any, roots: Sequence[str]) -> bool:
        p = fsdecode(realpath(path))
        return any(p == r or p.startswith(r + "/") for r in roots)

    def refuse(event: str, args: tuple) -> None:
        try:
            detail = repr(args)[:200]
        except BaseException:
            detail = "..."
        write(2, f"sandbox: forbidden: {event} {detail}\n".encode("utf-8", "replace"))
        _exit(forbidden)

    def hook(event: str, args: tuple) -> None:
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


def run(cfg: dict[str, Any], source: bytes) -> NoReturn:
    """Compile and execute the candidate; its way of ending becomes the exit status."""
    status = cfg["exit"]
    script = os.path.join(cfg["workdir"], "main.py")
    try:
        code = compile(source, script, "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: NUL bytes in the source
        traceback.print_exception(type(e), e, None)
        finish(status["syntax_error"])
    if cfg["audit"]:
        sys.addaudithook(audit_hook(cfg, [os.path.realpath(cfg["workdir"]), os.path.realpath(sys.base_prefix), os.devnull]))
    try:
        exec(code, {"__name__": "__main__", "__file__": script, "__builtins__": __builtins__})
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code_ = (e.code or 0) & 0xFF
        else:
            print(e.code, file=sys.stderr)
            code_ = 1
        finish(1 if code_ in status.values() else code_)
    except BaseException as e:
        try:
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # without the launcher's frame
        except BaseException:
            pass
        for kind, name in ((AssertionError, "wrong_answer"), (MemoryError, "out_of_memory"), (PermissionError, "forbidden")):
            if isinstance(e, kind):
                finish(status[name])
        finish(status["runtime_error"])
    finish(0)


def main() -> NoReturn:
    cfg = json.loads(sys.argv[1])
    work = cfg["workdir"]
    with open(os.path.join(work, "main.py"), "rb") as f:
        source = f.read()
    try:
        if cfg["jail"]:
            uid = cfg["uid_base"] + os.getpid()
            jail(cfg, source, uid)
            set_limits(cfg)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        else:
            set_limits(cfg)
    except BaseException as e:
        print(f"sandbox setup failed: {e!r}", file=sys.stderr)
        finish(cfg["setup_failed"])
    # Closed before the candidate runs, so that only the launcher can say that setup succeeded.
    os.write(cfg["ready_fd"], b"1")
    os.close(cfg["ready_fd"])
    os.chdir(work)  # in the jail: the tmpfs now mounted over the path
    sys.argv = [os.path.join(work, "main.py")]
    run(cfg, source)


if __name__ == "__main__":
    main()
