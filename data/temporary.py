"""Where a write in progress lives: ``.<name>.tmp-<host>-<pid>`` beside its final path, renamed into
place when complete. The writer's host and pid in the name tell what a killed run left behind from
a write still going on in another process; on a run root shared between machines, only a writer's
own host can tell, so another host's temporary names are never taken for a dead writer's."""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
from pathlib import Path

# Under a run root: a stage's work in progress, `.work/<its first output id>/` (generate's shards, evaluate's
# finished cells, training snapshots), which the stage removes once its outputs are saved and a killed one goes on from.
WORK = ".work"
_NAME = re.compile(r"^\..+\.tmp-(?P<host>[\w.-]+)-(?P<pid>\d+)$")
_HOST = re.sub(r"[^\w.-]", "_", socket.gethostname())


def temporary(path: Path, pid: int | None = None) -> Path:
    """The name this process (or process `pid` of this host) writes ``path`` under until it is complete."""
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid() if pid is None else pid}")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a write in progress (or a dead writer's remains)."""
    return _NAME.match(name) is not None


def _writer_gone(name: str) -> bool:
    match = _NAME.match(name)
    if match is None or match["host"] != _HOST:
        return False
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def leftovers(directory: Path, exclude: str | None = None) -> list[Path]:
    """Temporary names anywhere under ``directory`` (but its subdirectory ``exclude``) whose writer is no longer running."""
    return sorted(p for p in directory.rglob(".*.tmp-*")
                  if _writer_gone(p.name) and p.relative_to(directory).parts[0] != exclude)


def _remove(paths: list[Path]) -> list[Path]:
    for p in paths:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return paths


def sweep(path: Path) -> list[Path]:
    """Remove what dead writers left of ``path`` (half-written: nothing complete is lost); returns what went."""
    return _remove([p for p in path.parent.glob(f".{glob.escape(path.name)}.tmp-*") if _writer_gone(p.name)])


def sweep_under(directory: Path, exclude: str | None = None) -> list[Path]:
    """Remove the `leftovers` under ``directory``; returns what went."""
    return _remove(leftovers(directory, exclude)) if directory.is_dir() else []
