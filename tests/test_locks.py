"""The run root's stage locks (data/locks.py) between real processes: a second writer waits and is
told who holds the lock; a holder killed with SIGKILL leaves nothing to clean up. Two whole
`distillery run`s at once on one run root: tests/test_kill.py (its reference run)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from data import catalog as catalog_module
from data import locks
from data.catalog import Catalog
from data.errors import ArtifactError

REPO = Path(__file__).resolve().parent.parent
HOLD = (
    "import sys, time\nfrom pathlib import Path\nfrom data.locks import exclusive\n"
    "with exclusive(Path(sys.argv[1]), 'generate-code-abc', print):\n"
    "    print('held', flush=True)\n    time.sleep(600)\n"
)


def test_a_second_writer_waits_names_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        told, acquired = [], threading.Event()

        def second() -> None:
            with locks.exclusive(tmp_path, "generate-code-abc", told.append):
                acquired.set()

        waiter = threading.Thread(target=second, daemon=True)
        waiter.start()
        time.sleep(1.0)
        assert not acquired.is_set()
        assert len(told) == 1 and told[0].startswith(f"pid {holder.pid} on ") and " since " in told[0]
        other = threading.Event()  # another lock of the same run root is free meanwhile
        with locks.exclusive(tmp_path, "generate-math-abc", lambda who: None):
            other.set()
        assert other.is_set() and not acquired.is_set()
    finally:
        holder.kill()
        holder.wait()
    assert acquired.wait(timeout=5), "the lock of a killed holder was not released"
    waiter.join(timeout=5)
    assert (tmp_path / locks.LOCKS / "generate-code-abc.lock").read_text() == ""  # released: no holder named


def test_a_catalog_locked_too_long_is_named_as_locked_not_corrupt(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(catalog_module, "LOCK_TIMEOUT_S", 0.3)
    catalog = Catalog(tmp_path)
    stuck = sqlite3.connect(catalog.path, isolation_level=None)
    stuck.execute("BEGIN EXCLUSIVE")  # another process mid-write that never commits
    try:
        with pytest.raises(ArtifactError, match=r"stayed locked by another writer for 0.3 s") as e:
            catalog.list()
        assert "corrupt" not in str(e.value)
    finally:
        stuck.execute("ROLLBACK")
        stuck.close()
    assert catalog.list() == []
