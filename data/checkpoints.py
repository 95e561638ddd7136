"""Artifact directories (checkpoints, reports): written whole, with a manifest holding the lineage record.

A checkpoint holds its weights (`save_checkpoint`), or links to weights kept elsewhere
(`save_reference`: a user's pretrained checkpoint, adopted without a copy); `from_pretrained` loads both.
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


# Where a checkpoint adopted from a user's pretrained model came from, and how it loads.
PRETRAINED = "pretrained.json"


def save_reference(path: str | Path, record: LineageRecord, source: Path, provenance: dict, tokenizer) -> LineageRecord:
    """A checkpoint whose weights stay where they are: every file of the checkpoint directory `source`
    linked, not copied, so that `from_pretrained(path)` loads it as it is; the tokenizer saved (the run
    may have changed it: a pad token), and `provenance` (``pretrained``, ``revision``, ``dtype``,
    ``trust_remote_code``, the weights' sha256) beside it."""
    source = Path(source).resolve()

    def write(directory: Path) -> None:
        tokenizer.save_pretrained(directory)  # first: a linked tokenizer file would be written through into `source`
        for f in sorted(p for p in source.rglob("*") if p.is_file() and ".cache" not in p.relative_to(source).parts):
            target = directory / f.relative_to(source)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(f)
        (directory / PRETRAINED).write_text(json.dumps(provenance, indent=2, sort_keys=True))

    return save_directory(path, record, write)


def read_manifest(path: str | Path) -> LineageRecord:
    manifest = Path(path) / MANIFEST
    if not manifest.exists():
        raise ArtifactError(f"checkpoint manifest not found: {manifest}")
    try:
        return LineageRecord.from_json(manifest.read_text())
    except ValueError as e:  # json.JSONDecodeError is one
        raise ArtifactError(f"corrupt checkpoint manifest {manifest}: {e}") from None


def compute_device() -> str:
    """Where models run: `DISTILLERY_DEVICE` if set (cpu, cuda, cuda:1), else the first GPU when there is one."""
    import torch

    return os.environ.get("DISTILLERY_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def load_checkpoint(path: str | Path):
    """Return (model, tokenizer) loaded with the standard transformers entry points, the model on `compute_device()`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    read_manifest(path)
    kwargs = {}
    if (path / PRETRAINED).exists():  # adopted: load in the dtype and with the code trust the user chose
        provenance = json.loads((path / PRETRAINED).read_text())
        kwargs = {"dtype": provenance["dtype"], "trust_remote_code": provenance["trust_remote_code"]}
    try:
        with _LOAD_LOCK:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot load checkpoint {path}: {e}") from e
    return model.to(compute_device()), tokenizer
