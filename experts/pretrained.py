"""A user's pretrained checkpoint as the base: adopted where it is, its identity in the lineage.

The base stage does not copy weights it does not change: its artifact links to the checkpoint's
files (`data.checkpoints.save_reference`; a hub id is first fetched into the Hugging Face cache by
`snapshot_download`), so later stages, and users, load it with `from_pretrained`. Its identity is
the hub id and the commit its revision resolves to (a branch follows the hub: new commits are a new
base), or for a local directory its files' names, sizes and modification times
(cheap enough to compute at every plan); the sha256 of each weight file is taken once, at
adoption, and kept in the lineage.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from data.checkpoints import compute_device
from data.integrity import fingerprint
from experts.model import PretrainedSource

WEIGHT_SUFFIXES = (".safetensors", ".bin")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def is_local(cfg: PretrainedSource) -> bool:
    return cfg.pretrained is not None and Path(cfg.pretrained).expanduser().is_dir()


def pinned(cfg: PretrainedSource) -> PretrainedSource:
    """`cfg` with a hub id's revision (a branch, a tag, or none: main) replaced by the commit it names
    now: the hub's answer, or offline the commit the local cache last fetched for it. Unchanged for a
    local directory, a commit, or a revision nobody can resolve (loading it then fails with the reason)."""
    revision = cfg.revision or "main"
    if is_local(cfg) or _COMMIT.fullmatch(revision):
        return cfg
    from huggingface_hub import HfApi, constants

    commit = None
    if not constants.HF_HUB_OFFLINE:
        try:
            commit = HfApi().model_info(cfg.pretrained, revision=revision).sha
        except Exception:  # unreachable hub, no such repo: the cache may still know it, else loading says why
            commit = None
    if commit is None:
        ref = Path(constants.HF_HUB_CACHE) / f"models--{cfg.pretrained.replace('/', '--')}" / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else None
    return cfg.model_copy(update={"revision": commit}) if commit else cfg


def source_identity(cfg: PretrainedSource | None) -> dict[str, Any] | None:
    """What names a pretrained checkpoint in the identity of the stages that start from it; None when there is none."""
    if cfg is None or cfg.pretrained is None:
        return None
    cfg = pinned(cfg)
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


def adopt(cfg: PretrainedSource) -> tuple[Path, PreTrainedTokenizerBase, dict[str, Any]]:
    """Check that `cfg.pretrained` loads; return (its local directory, its tokenizer ready for the run, its provenance).

    Reads the config and tokenizer only: the weights load when a stage first trains them.
    """
    where = f"model.pretrained {cfg.pretrained!r}"
    cfg = pinned(cfg)  # the snapshot the plan's identity names, even if the branch moved since
    kwargs = cfg.load_kwargs()
    try:
        if is_local(cfg):
            directory = Path(cfg.pretrained).expanduser().resolve()
        else:
            from huggingface_hub import snapshot_download

            directory = Path(snapshot_download(cfg.pretrained, revision=cfg.revision))
        config = AutoConfig.from_pretrained(directory, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    except (OSError, ValueError) as e:  # huggingface_hub's errors (no network, no such repo) are OSErrors
        raise ValueError(f"{where} cannot be loaded: {e}") from None
    tokenizer = ready_tokenizer(tokenizer, where)
    _check_fit(len(tokenizer), config.get_text_config().vocab_size, where)
    weights = sorted(p for p in directory.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not weights:
        raise ValueError(f"{where} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    # The snapshot directory of a hub id is named by the commit its revision (a branch, a tag) resolved to.
    revision = None if is_local(cfg) else directory.name
    provenance = {
        "pretrained": cfg.pretrained, "revision": revision, "architecture": config.model_type,
        "dtype": cfg.dtype, "trust_remote_code": cfg.trust_remote_code,
        "weights_sha256": {p.relative_to(directory).as_posix(): fingerprint(p) for p in weights},
    }
    return directory, tokenizer, provenance


def load_pretrained(cfg: PretrainedSource, where: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model and its tokenizer (ready for the run), as `from_pretrained` loads them; `where` names the setting in errors."""
    cfg = pinned(cfg)
    kwargs = cfg.load_kwargs()
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.pretrained, dtype=cfg.dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(cfg.pretrained, **kwargs)
    except (OSError, ValueError) as e:
        raise ValueError(f"{where} {cfg.pretrained!r} cannot be loaded: {e}") from None
    _check_fit(len(tokenizer), model.get_input_embeddings().num_embeddings, f"{where} {cfg.pretrained!r}")
    return model.to(compute_device()), ready_tokenizer(tokenizer, f"{where} {cfg.pretrained!r}")


def _check_fit(tokens: int, rows: int, where: str) -> None:
    # Otherwise the first sample holding one of the extra tokens fails deep in training with an IndexError.
    if tokens > rows:
        raise ValueError(f"{where}: its tokenizer has {tokens} tokens but the model's embedding table {rows} rows")


def same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Token ids mean the same strings in both: logits over one are logits over the other."""
    return a.get_vocab() == b.get_vocab()


def describe_vocabulary(tokenizer: PreTrainedTokenizerBase, name: str) -> str:
    return f"{name} ({type(tokenizer).__name__}, {len(tokenizer)} tokens)"
