"""Artifact directories (checkpoints, reports): written whole, with a manifest holding the lineage record."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from data.errors import ArtifactError
from data.integrity import content_bytes, fingerprint
from data.lineage import MANIFEST, LineageRecord
from data.temporary import temporary

# `from_pretrained` swaps process globals while it builds a model (the default device to meta, `tie_weights` to a
# no-op) and restores them on exit: two threads loading at once (the pipeline's domain branches) restore each
# other's swapped values and leave untied, meta-device weights behind. One load at a time.
_LOAD_LOCK = threading.Lock()


def save_directory(path: str | Path, record: LineageRecord, write: Callable[[Path], None]) -> LineageRecord:
    """Fill a temporary sibling directory with `write(directory)`, add the manifest, and rename it into place when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
        record.bytes, record.sha256 = content_bytes(tmp), fingerprint(tmp)
        (tmp / MANIFEST).write_text(json.dumps(json.loads(record.to_json()), indent=2, sort_keys=True))
        if path.exists():
            # Same id means same content: an older copy (e.g. from an interrupted catalog write) is replaced.
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def save_checkpoint(model, tokenizer, path: str | Path, record: LineageRecord) -> LineageRecord:
    """`save_pretrained` (safetensors) of the model and its tokenizer, atomically, with the lineage manifest."""

    def write(directory: Path) -> None:
        model.save_pretrained(directory, safe_serialization=True)
        tokenizer.save_pretrained(directory)

    return save_directory(path, record, write)


def read_manifest(path: str | Path) -> LineageRecord:
    manifest = Path(path) / MANIFEST
    if not manifest.exists():
        raise ArtifactError(f"checkpoint manifest not found: {manifest}")
    try:
        return LineageRecord.from_json(manifest.read_text())
    except ValueError as e:  # json.JSONDecodeError is one
        raise ArtifactError(f"corrupt checkpoint manifest {manifest}: {e}") from None


def load_checkpoint(path: str | Path):
    """Return (model, tokenizer) loaded with the standard transformers entry points."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    read_manifest(path)
    try:
        with _LOAD_LOCK:
            model = AutoModelForCausalLM.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot load checkpoint {path}: {e}") from e
    return model, tokenizer
