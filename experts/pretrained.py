"""A user's pretrained checkpoint as the base: adopted where it is, its identity in the lineage.

The base stage does not copy weights it does not change: its artifact is a reference
(`data.checkpoints.save_reference`) that later stages load through `from_pretrained`. Its identity
is the hub id and revision, or for a local directory its files' names, sizes and modification
times (cheap enough to compute at every plan); the sha256 of each weight file is taken once, at
adoption, and kept in the lineage.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from data.integrity import fingerprint
from experts.model import ModelConfig

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def is_local(cfg: ModelConfig) -> bool:
    return cfg.pretrained is not None and Path(cfg.pretrained).expanduser().is_dir()


def source_identity(cfg: ModelConfig) -> dict[str, Any] | None:
    """What names the pretrained checkpoint in the base stage's identity; None when training from scratch."""
    if cfg.pretrained is None:
        return None
    identity: dict[str, Any] = {"pretrained": cfg.pretrained, "revision": cfg.revision, "dtype": cfg.dtype}
    if is_local(cfg):
        root = Path(cfg.pretrained).expanduser()
        listing = hashlib.sha256()
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = f.stat()
            listing.update(f"{f.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        identity["files"] = listing.hexdigest()[:16]
    return identity


def ready_tokenizer(tokenizer: PreTrainedTokenizerBase, where: str) -> PreTrainedTokenizerBase:
    """The tokenizer as every stage expects it: a pad token (its EOS when it has none, as most base
    models ship) and left padding (generation appends to the right of each prompt)."""
    if tokenizer.eos_token is None:
        raise ValueError(f"the tokenizer of {where} has no EOS token: generation could never end a completion")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def adopt(cfg: ModelConfig) -> tuple[PreTrainedTokenizerBase, dict[str, Any], dict[str, Any]]:
    """Check that `cfg.pretrained` loads, and return (its tokenizer, the reference to save, lineage metrics).

    Reads the config and tokenizer only: the weights load when a stage first trains them.
    """
    where = f"model.pretrained {cfg.pretrained!r}"
    kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(cfg.pretrained, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(cfg.pretrained, **kwargs)
    except (OSError, ValueError) as e:
        raise ValueError(f"{where} cannot be loaded: {e}") from None
    tokenizer = ready_tokenizer(tokenizer, where)
    path = str(Path(cfg.pretrained).expanduser().resolve()) if is_local(cfg) else cfg.pretrained
    # A branch or tag moves; the commit it resolved to does not.
    revision = getattr(config, "_commit_hash", None) or cfg.revision
    source: dict[str, Any] = {"path": path, "revision": revision, "dtype": cfg.dtype, "trust_remote_code": cfg.trust_remote_code}
    metrics: dict[str, Any] = {"pretrained": cfg.pretrained, "revision": revision, "architecture": config.model_type}
    if is_local(cfg):
        weights = sorted(p for p in Path(path).rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
        if not weights:
            raise ValueError(f"{where} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
        source["files"] = {p.relative_to(path).as_posix(): [p.stat().st_size, fingerprint(p)] for p in weights}
        metrics["weights_sha256"] = {name: sha for name, (_, sha) in source["files"].items()}
    return tokenizer, source, metrics
