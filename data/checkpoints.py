"""Artifact directories (checkpoints, reports): written whole, with a manifest holding the lineage record.

A checkpoint is either the weights themselves (`save_checkpoint`) or a reference to weights kept
elsewhere (`save_reference`: a user's pretrained checkpoint, adopted without a copy); `load_checkpoint`
reads both.
"""

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


# The file of a reference checkpoint: where its weights are and how they were loaded.
REFERENCE = "pretrained.json"


def save_reference(path: str | Path, record: LineageRecord, source: dict, tokenizer) -> LineageRecord:
    """A checkpoint artifact whose weights stay where they are: `source` (``path``, ``revision``, ``dtype``,
    ``trust_remote_code``, and for a local directory ``files``: name -> bytes, sha256) and the tokenizer,
    which the run may have changed (a pad token added)."""

    def write(directory: Path) -> None:
        (directory / REFERENCE).write_text(json.dumps(source, indent=2, sort_keys=True))
        tokenizer.save_pretrained(directory)

    return save_directory(path, record, write)


def _check_source(source: dict) -> None:
    """A local pretrained checkpoint still holds the weight files it was adopted with, at the same sizes
    (cheap; the sha256 taken at adoption is in the lineage for a full check)."""
    root = Path(source["path"])
    for name, (size, _) in source.get("files", {}).items():
        f = root / name
        if not f.is_file():
            raise ArtifactError(f"pretrained checkpoint {root} lost {name} since the run adopted it")
        if f.stat().st_size != size:
            raise ArtifactError(f"pretrained checkpoint {root} changed since the run adopted it: {name} is {f.stat().st_size} bytes, {size} then")


def load_pretrained_model(source: dict):
    """The model a reference points at, through the ordinary `from_pretrained` call."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        source["path"], revision=source.get("revision"), dtype=source.get("dtype", "auto"),
        trust_remote_code=source.get("trust_remote_code", False),
    )


def read_manifest(path: str | Path) -> LineageRecord:
    manifest = Path(path) / MANIFEST
    if not manifest.exists():
        raise ArtifactError(f"checkpoint manifest not found: {manifest}")
    try:
        return LineageRecord.from_json(manifest.read_text())
    except ValueError as e:  # json.JSONDecodeError is one
        raise ArtifactError(f"corrupt checkpoint manifest {manifest}: {e}") from None


def load_checkpoint(path: str | Path):
    """Return (model, tokenizer) loaded with the standard transformers entry points (a reference: from where it points)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    read_manifest(path)
    try:
        with _LOAD_LOCK:
            if (path / REFERENCE).exists():
                source = json.loads((path / REFERENCE).read_text())
                _check_source(source)
                model = load_pretrained_model(source)
            else:
                model = AutoModelForCausalLM.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot load checkpoint {path}: {e}") from e
    return model, tokenizer
