"""The sandbox contains hostile programs and classifies every outcome; the test process is
unaffected and nothing is left running.

Each hostile program runs under the full sandbox and under each layer alone: the jail without
the audit hook, and the audit hook without the jail (what a non-root run gets). Either layer
must contain it by itself; the full sandbox must also give the exact verdict.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from domains import sandbox
from domains.sandbox import OUTPUT_BYTES, STATUSES, SandboxError, SandboxResult, run_sandboxed

JAIL = sandbox.isolation() == "jail"
LAYERS = ["full", "jail-only", "hook-only"]


def run(layer: str, source: str, timeout_s: float = 5.0) -> SandboxResult:
    if layer == "full":
        return run_sandboxed(source, timeout_s)
    if layer == "jail-only" and not JAIL:
        pytest.skip("no jail here (not root, or namespaces not permitted)")
    return sandbox._run(source, timeout_s, jail=layer == "jail-only", audit_hook=layer == "hook-only")


def _sessions() -> dict[int, int]:
    """pid -> session id of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited meanwhile
            out[int(entry.name)] = int(fields[3])
    return out


@pytest.fixture(autouse=True)
def no_strays(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """After each test, no process is left in the session of any launcher the test started."""
    launched: list[int] = []

    class Recording(subprocess.Popen):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            launched.append(self.pid)

    monkeypatch.setattr(sandbox.subprocess, "Popen", Recording)
    yield
    deadline = time.monotonic() + 3.0  # killed processes take a moment to exit and be reaped
    while (strays := {pid: sid for pid, sid in _sessions().items() if sid in launched}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not strays


# --- outcome classes --------------------------------------------------------------------------


CLASSIFICATION = [
    ("print(sum(range(10)))", "ok"),
    ("def f(:\n", "syntax_error"),
    ("x = 1\0", "syntax_error"),
    ("assert 1 + 1 == 3", "wrong_answer"),
    ("[].pop()", "runtime_error"),
    ("import numpy", "runtime_error"),  # only the standard library
    ("x = bytearray(2 * 1024**3)", "out_of_memory"),
    ("import sys\nsys.exit(3)", "crash"),
    ("import os\nos.abort()", "crash"),
    ("import sys\nsys.exit(202)", "crash"),  # the launcher's own codes are not the candidate's to use
    ("import time\ntime.sleep(30)", "timeout"),
    ("import os\nos.system('true')", "forbidden"),
    ("import ctypes", "forbidden"),
    ("open('/dev/null', 'w').write('x')", "ok"),
]


@pytest.mark.parametrize(("source", "status"), CLASSIFICATION)
def test_classification(source: str, status: str) -> None:
    assert run_sandboxed(source, timeout_s=1.0).status == status


def test_every_status_is_covered() -> None:
    assert {status for _, status in CLASSIFICATION} == set(STATUSES)


def test_output_within_limits_is_kept_whole() -> None:
    r = run_sandboxed("import sys\nfor i in range(1000):\n    print(i)\nprint('warn', file=sys.stderr)")
    assert r.status == "ok" and r.returncode == 0
    assert r.stdout == "".join(f"{i}\n" for i in range(1000)) and r.stderr == "warn\n"


def test_files_inside_the_working_directory_are_allowed() -> None:
    r = run_sandboxed("import tempfile\nopen('a.txt', 'w').write('hi')\nwith tempfile.TemporaryFile() as f:\n"
                      "    f.write(b'x')\nprint(open('a.txt').read())")
    assert (r.status, r.stdout) == ("ok", "hi\n")


def test_file_size_is_limited() -> None:
    r = run_sandboxed(f"with open('big', 'wb') as f:\n    f.write(b'x' * {sandbox.FILE_BYTES + 1})")
    assert r.status == "runtime_error" and "File too large" in r.stderr


# --- hostile programs -------------------------------------------------------------------------


@dataclass
class Hostile:
    source: str
    full: str  # the verdict under the full sandbox
    check: Callable[[SandboxResult], None] = lambda r: None  # what must hold under every layer
    timeout_s: float = 5.0
    # Further verdicts a layer alone may give: the jail's kernel refusals surface as exceptions
    # (EAGAIN from fork, a hidden path not found, an unreachable network) rather than refusals.
    alone: tuple[str, ...] = ()


def _hostile(tmp_path: Path) -> dict[str, Hostile]:
    """The hostile programs, by name. Their targets lie in ``tmp_path``: the secret that the test
    writes there (mode 0600) and files that must not appear."""
    secret = tmp_path / "secret.txt"
    escaped = tmp_path / "escaped.txt"
    shelled = tmp_path / "shelled.txt"

    def not_created(path: Path) -> Callable[[SandboxResult], None]:
        def check(r: SandboxResult) -> None:
            assert not path.exists()

        return check

    def secret_kept(r: SandboxResult) -> None:
        assert "s3cret-token" not in r.stdout + r.stderr

    return {
        "infinite loop": Hostile("while True:\n    pass", "timeout", timeout_s=1.0),
        # Bounded so that even an uncontained run cannot take the machine down: 200 sleepers,
        # which the process-group kill would then have to remove (see no_strays).
        "fork bomb": Hostile("import os, time\nfor _ in range(200):\n    if os.fork() == 0:\n        time.sleep(60)\n"
                             "        os._exit(0)\nprint('forked')", "forbidden",
                             lambda r: assert_not_in("forked", r.stdout), alone=("runtime_error",)),
        "shell out": Hostile(f"import subprocess\nsubprocess.run(['touch', {str(shelled)!r}])", "forbidden",
                             not_created(shelled), alone=("runtime_error",)),
        "memory bomb": Hostile("xs = []\nwhile True:\n    xs.append(bytearray(10**7))", "out_of_memory"),
        "write outside": Hostile(f"open({str(escaped)!r}, 'w').write('x')", "forbidden", not_created(escaped),
                                 alone=("runtime_error",)),
        "read host file": Hostile(f"print(open({str(secret)!r}).read())", "forbidden", secret_kept, alone=("runtime_error",)),
        "kill parent": Hostile("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", "forbidden"),
        "huge output": Hostile("import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 10**6)\nprint('END')", "ok",
                               lambda r: assert_capped(r, end="xEND\n")),
        "endless output": Hostile("import sys\nwhile True:\n    sys.stdout.write('y' * 10**5)\n    sys.stderr.write('z')",
                                  "timeout", lambda r: assert_capped(r, end="yyy"), timeout_s=1.0),
    }


def assert_not_in(text: str, output: str) -> None:
    assert text not in output


def assert_capped(r: SandboxResult, end: str) -> None:
    assert len(r.stdout) == OUTPUT_BYTES and r.stdout.endswith(end)


HOSTILE = list(_hostile(Path("/unused")))  # names only, for parametrize


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_program_is_contained(name: str, layer: str, tmp_path: Path) -> None:
    case = _hostile(tmp_path)[name]
    (tmp_path / "secret.txt").write_text("s3cret-token")
    (tmp_path / "secret.txt").chmod(0o600)
    start = time.monotonic()
    r = run(layer, case.source, case.timeout_s)
    elapsed = time.monotonic() - start
    assert r.status in {case.full} | (set(case.alone) if layer != "full" else set()), r.stderr
    case.check(r)
    assert elapsed < case.timeout_s + 3.0


@pytest.mark.parametrize("layer", LAYERS)
def test_network_is_unreachable(layer: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        r = run(layer, f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                       "s.sendall(b'leak')\nprint('connected')")
        assert r.status == ("forbidden" if layer != "jail-only" else "runtime_error"), r.stderr
        assert "connected" not in r.stdout
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()


@pytest.mark.skipif(not JAIL, reason="no jail here")
def test_jail_layers() -> None:
    """Inside the jail: an unprivileged uid of its own, no network interfaces up, host temporary
    and home directories hidden, no new threads or processes (RLIMIT_NPROC binds: not root)."""
    r = sandbox._run(
        "import os, threading\n"
        "print(os.getuid(), os.getgid(), os.getgroups())\n"
        "print(sorted(os.listdir('/tmp')), os.listdir('/home') if os.path.isdir('/home') else [])\n"
        "print(open('/proc/net/dev').read().count(':'))\n"
        "threading.Thread(target=print).start()\n",
        5.0, jail=True, audit_hook=False)
    uid_line, tmp_line, interfaces, *_ = r.stdout.splitlines()
    uid, gid, groups = uid_line.split(" ", 2)
    assert int(uid) == int(gid) > sandbox.UID_BASE and groups == "[]"
    assert tmp_line.startswith("[") and tmp_line.count("sandbox-") == 1 and tmp_line.endswith(" []")
    assert interfaces == "1"  # loopback only, and it is down
    assert r.status == "runtime_error" and "can't start new thread" in r.stderr


def test_host_is_unchanged(tmp_path: Path) -> None:
    """The jail's mounts stay in its own namespace; the test process keeps its cwd and files."""
    mounts, cwd = Path("/proc/self/mountinfo").read_text(), os.getcwd()
    (tmp_path / "mine").write_text("x")
    assert run_sandboxed("import os\nos.listdir('.')").status == "ok"
    assert Path("/proc/self/mountinfo").read_text() == mounts and os.getcwd() == cwd
    assert (tmp_path / "mine").read_text() == "x"


def test_concurrent_runs_from_threads() -> None:
    """The pipeline verifies from thread pools: runs overlap and each gets its own result."""
    programs = {
        0: ("while True:\n    pass", "timeout"),
        1: ("print({i})", "ok"),
        2: ("x = bytearray(2 * 1024**3)", "out_of_memory"),
        3: ("assert {i} == -1", "wrong_answer"),
    }
    jobs = [(i, *programs[i % 4]) for i in range(12)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda job: run_sandboxed(job[1].format(i=job[0]), timeout_s=1.0), jobs))
    assert [r.status for r in results] == [status for _, _, status in jobs]
    assert [r.stdout for r, (i, _, status) in zip(results, jobs) if status == "ok"] == [f"{i}\n" for i, _, s in jobs if s == "ok"]


@pytest.mark.skipif(not JAIL, reason="no jail here")
def test_setup_failure_raises_but_a_candidate_cannot_fake_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(sandbox, "UID_BASE", 2**40)  # setuid() refuses it
        with pytest.raises(SandboxError, match="setup failed"):
            sandbox._run("print('never')", 5.0, jail=True, audit_hook=True)
    r = run_sandboxed(f"import os\nos._exit({sandbox._SETUP_FAILED})")
    assert r.status == "crash"
