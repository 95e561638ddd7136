"""One writer per stage output on a run root: two runs at once (two `distillery run`, two people, two
machines on a shared mount) never compute the same artifact together; the later one waits, then
finds the work done and skips it.

The lock is `fcntl.flock` on a file under ``<run root>/locks/``. The kernel drops it when its holder
exits, so a killed run leaves no stale lock to clear by hand. On NFS (v4) Linux turns flock into
byte-range locks the server arbitrates across machines; Lustre needs its ``flock`` mount option.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

LOCKS = "locks"
POLL_S = 0.2
REPORT_EVERY_S = 60.0


def holder() -> str:
    """Who this process is, as a waiter reads it in the lock file."""
    return f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(timezone.utc).isoformat(timespec='seconds')}"


@contextmanager
def exclusive(root: Path, name: str, waiting: Callable[[str], None]) -> Iterator[None]:
    """Hold the lock `name` of the run root `root`; while another process holds it, call `waiting`
    with who holds it (at once, then every minute) and wait."""
    path = root / LOCKS / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        reported = None
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if reported is None or time.monotonic() - reported >= REPORT_EVERY_S:
                    f.seek(0)
                    waiting(f.read().strip() or "another process")  # empty: the holder has not written its name yet
                    reported = time.monotonic()
                time.sleep(POLL_S)
        try:
            f.seek(0)
            f.truncate()
            f.write(holder())
            f.flush()
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)
