"""Run untrusted Python (model-written code) in a constrained subprocess.

Layers, each cheap and each catching a different failure:

* a fresh temporary directory as cwd, removed afterwards;
* ``python -I -S``: isolated mode (no user site, no PYTHON* variables, script dir not trusted)
  and no site-packages, so only the standard library is importable;
* an empty environment apart from a minimal PATH;
* rlimits set in the child before exec: CPU seconds, address space (memory), file size (also
  caps what the child can write to stdout/stderr, which go to unlinked temp files rather than
  pipes so a chatty child cannot fill the parent's memory), open files;
* a wall-clock timeout after which the whole process group (the child runs in its own session)
  is killed, so a sleeping child or one that forked is stopped too.

Not covered (harden here if the threat model grows): network access, reading files the user can
read, process-count limits (RLIMIT_NPROC does not bind root). Use a container or seccomp for that.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MEMORY_BYTES = 512 * 1024 * 1024
OUTPUT_BYTES = 1024 * 1024  # RLIMIT_FSIZE: per written file, stdout/stderr included
KEEP_CHARS = 16 * 1024  # returned tail of stdout/stderr: tracebacks and end markers come last


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "ok" (exit 0) | "error" (non-zero exit or killed by a signal) | "timeout"
    stdout: str
    stderr: str
    returncode: int


def _limits(cpu_s: int) -> None:
    # Runs in the child between fork and exec.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_BYTES, OUTPUT_BYTES))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _tail(f) -> str:
    f.seek(0)
    return f.read().decode("utf-8", "replace")[-KEEP_CHARS:]


def run_sandboxed(source: str, timeout_s: float = 5.0) -> SandboxResult:
    """Run ``source`` as a script under the limits above and report how it ended."""
    # The CPU limit sits above the wall-clock one so that a busy loop is reported as a timeout
    # by the wall clock; SIGXCPU is still classed as a timeout should it come first.
    cpu_s = math.ceil(timeout_s) + 1
    with tempfile.TemporaryDirectory(prefix="sandbox-") as tmp, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        script = Path(tmp) / "main.py"
        script.write_text(source, encoding="utf-8")
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", script.name],
            cwd=tmp,
            env={"PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            preexec_fn=lambda: _limits(cpu_s),
            start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout=timeout_s)
            timed_out = returncode == -signal.SIGXCPU
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Also reaps anything the child started in its session.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            returncode = proc.wait()
        status = "timeout" if timed_out else ("ok" if returncode == 0 else "error")
        return SandboxResult(status, _tail(out), _tail(err), returncode)
