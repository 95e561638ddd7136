"""Where a write in progress lives: ``.<name>.tmp-<pid>`` beside its final path, renamed into
place when complete. The writer's pid in the name tells what a killed run left behind from a
write still going on in another process."""

from __future__ import annotations

import glob
import os
import re
import shutil
from pathlib import Path

_NAME = re.compile(r"^\..+\.tmp-(\d+)$")


def temporary(path: Path) -> Path:
    """The name this process writes ``path`` under until it is complete."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a write in progress (or a dead writer's remains)."""
    return _NAME.match(name) is not None


def _writer_gone(name: str) -> bool:
    match = _NAME.match(name)
    if match is None:
        return False
    try:
        os.kill(int(match.group(1)), 0)
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
