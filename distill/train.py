"""The student's training loop: cross-entropy on the experts' own tokens plus optional top-k logit KD.

Rows that carry the expert's token ids (`token_ids`, `prompt_len`, from the generate stage) are
trained on exactly those ids: decoding a completion and re-encoding the text can give other
tokens than the ones the expert produced, and then the stored top-k no longer lines up. Rows
with text only (seed data, for the no-expert baseline) are tokenized like SFT does.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from distill.losses import topk_kd_loss
from experts.model import StudentSource
from experts.sft import ProgressFn, TrainConfig, adamw, autocast, collate, encode, length_grouped_batches, lr_at, training
from experts.snapshot import Snapshot, capture, resume
from experts.warmup import WarmupConfig, attention_modules, warmup_indexer
from generation.turns import IGNORE, mask_tool_results, model_token_positions


class KDConfig(BaseModel):
    """How the student's loss combines sequence-level KD (cross-entropy) and token-level KD (top-k logits)."""

    model_config = ConfigDict(extra="forbid")

    loss: Literal["none", "forward_kl", "reverse_kl", "jsd"] = Field(
        "none",
        description="token-level KD against the teacher's stored top-k: forward_kl (mass-covering), reverse_kl (mode-seeking), "
        "jsd (generalized JSD with beta); none: cross-entropy only",
    )
    weight: float = Field(1.0, ge=0, description="weight of the token-level KD term")
    ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy on the experts' tokens (sequence-level KD)")
    beta: float = Field(0.5, gt=0, lt=1, description="jsd only: m = beta * teacher + (1 - beta) * student")
    tail: Literal["bucket", "drop"] = Field(
        "bucket", description="mass outside the teacher's top-k: bucket = one extra 'rest' token for both; drop = renormalise both over the top-k"
    )

    @model_validator(mode="after")
    def _check(self) -> KDConfig:
        if self.ce_weight == 0 and (self.loss == "none" or self.weight == 0):
            raise ValueError("ce_weight is 0 and no token-level KD term is on: the student would learn nothing")
        return self


class DistillConfig(TrainConfig):
    """The student's training: SFT settings (the budget, shared with the no-expert baseline) plus the mixture and KD."""

    student: StudentSource | None = Field(
        None, description="a pretrained student of another size or family (the baseline starts from it too); unset: the student starts from the base",
    )
    kd: KDConfig = Field(default_factory=KDConfig)
    domain_weights: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="sampling weight of each domain's rows (unlisted: 1; 2 = seen twice as often; 0 = left out)"
    )
    decontam_ngram: int = Field(8, ge=0, description="word n-gram size of the overlap check against every eval prompt; 0 turns it off")
    decontam_overlap: float = Field(
        0.8, gt=0, le=1, description="a training row is dropped when this share of its prompt's n-grams occurs in eval prompts"
    )

    def budget(self) -> DistillConfig:
        """What the no-expert baseline trains with: the same steps, optimizer and domain weights, no KD."""
        return DistillConfig(**self.model_dump(include={*TrainConfig.model_fields, "domain_weights", "student"}))


@dataclass
class Example:
    domain: str
    ids: list[int]
    labels: list[int]
    kd_pos: list[int]  # positions (< max_len) whose token has teacher top-k, in the order of the rows below
    topk_ids: np.ndarray | None  # [len(kd_pos), K]
    topk_logprobs: np.ndarray | None  # [len(kd_pos), K] float16


def encode_row(tokenizer: PreTrainedTokenizerFast, row: Mapping, max_len: int, with_topk: bool, teacher_ids: bool = True) -> Example:
    """One training example from a mixture row (the experts' token ids) or a seed row (text).

    `teacher_ids=False` (a student with another vocabulary) encodes a mixture row from its text instead.
    """
    if row.get("token_ids") is None or not teacher_ids:
        ids, labels = encode(tokenizer, row["prompt"], row["completion"], False, max_len)
        return Example(row["domain"], ids, labels, [], None, None)
    ids, prompt_len = list(row["token_ids"]), row["prompt_len"]
    labels = mask_tool_results(tokenizer, ids, [IGNORE] * prompt_len + ids[prompt_len:])
    positions = model_token_positions(tokenizer, ids, prompt_len)
    if not with_topk:
        return Example(row["domain"], ids[:max_len], labels[:max_len], [], None, None)
    if row.get("topk_ids") is None or len(row["topk_ids"]) != len(positions):
        raise ValueError(f"row {row.get('task_id')}: token-level KD needs one top-k entry per generated token (generate with teacher_logprobs.topk > 0)")
    keep = sum(p < max_len for p in positions)
    return Example(
        row["domain"],
        ids[:max_len],
        labels[:max_len],
        positions[:keep],
        np.asarray(row["topk_ids"][:keep], dtype=np.int64).reshape(keep, -1),
        np.asarray(row["topk_logprobs"][:keep], dtype=np.float16).reshape(keep, -1),
    )


def weighted_epoch(domains: Sequence[str], weights: Mapping[str, float], rng: random.Random) -> list[int]:
    """Example indices for one epoch: each domain's rows repeated (or subsampled) by its weight."""
    by_domain: dict[str, list[int]] = {}
    for i, d in enumerate(domains):
        by_domain.setdefault(d, []).append(i)
    epoch = []
    for d, idx in sorted(by_domain.items()):
        count = round(weights.get(d, 1.0) * len(idx))
        pool = []
        while len(pool) < count:
            pool += rng.sample(idx, len(idx))
        epoch += pool[:count]
    return epoch


def train_student(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    rows: Sequence[Mapping],
    cfg: DistillConfig,
    *,
    seed: int,
    progress: ProgressFn | None = None,
    teacher_ids: bool = True,
    snapshot: Snapshot | None = None,
) -> dict[str, list[float]]:
    """Train in place on `rows`; returns per-step curves: loss (the weighted sum), ce, kd when on, and tokens
    (the positions that carried loss: completion tokens, tool results left out). `seed` draws the batches.
    `snapshot`: resume from it and save to it as training goes (`experts.snapshot`).

    `teacher_ids=False`: the student's vocabulary is not the experts', so it learns from the rows' text
    (sequence-level KD); token-level KD, which compares distributions over one vocabulary, is refused.
    """
    kd_on = cfg.kd.loss != "none"
    if kd_on and not teacher_ids:
        raise ValueError(f"distill.kd.loss {cfg.kd.loss}: the student's vocabulary is not the teachers'; use kd.loss none (sequence-level KD)")
    examples = [encode_row(tokenizer, r, cfg.max_len, kd_on, teacher_ids) for r in rows]
    domains = [e.domain for e in examples]
    if not weighted_epoch(domains, cfg.domain_weights, random.Random(0)):
        raise ValueError("train_student: no rows left after domain_weights")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    with training(model, cfg):
        optimizer = adamw(model, cfg)
        start, carried = resume(snapshot, model, optimizer, {"batches": rng})
        curves: dict[str, list[float]] = carried.get("curves", {"loss": [], "ce": [], **({"kd": []} if kd_on else {}), "tokens": []})
        batches: list[list[int]] = carried.get("batches", [])
        for step in range(start, cfg.steps):
            if not batches:
                epoch = weighted_epoch(domains, cfg.domain_weights, rng)
                batches = [[epoch[i] for i in b] for b in length_grouped_batches([len(examples[i].ids) for i in epoch], cfg.batch_size, rng)]
            chosen = [examples[i] for i in batches.pop()]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            batch = collate([(e.ids, e.labels) for e in chosen], tokenizer.pad_token_id)
            with autocast(model, cfg.precision):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()  # [B, L, V]
            # The logits at position t predict token t + 1.
            targets = batch["labels"][:, 1:]
            ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
            loss = cfg.kd.ce_weight * ce
            if kd_on:
                kd = _kd_term(logits, chosen, cfg)
                loss = loss + cfg.kd.weight * kd
                curves["kd"].append(kd.item())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            curves["loss"].append(loss.item())
            curves["ce"].append(ce.item())
            curves["tokens"].append(int((targets != IGNORE).sum()))
            if snapshot is not None and snapshot.due(step + 1, cfg.steps):
                snapshot.save(capture(step + 1, cfg.steps, model, optimizer, {"batches": rng}, batches=batches, curves=curves))
            if progress is not None:
                progress(step + 1, cfg.steps, curves["loss"][-1])
    return curves


def train_and_warm_up(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    rows: Sequence[Mapping],
    cfg: DistillConfig,
    warmup: WarmupConfig,
    *,
    seed: int,
    train_progress: ProgressFn | None = None,
    warmup_progress: ProgressFn | None = None,
    teacher_ids: bool = True,
    train_snapshot: Snapshot | None = None,
    warmup_snapshot: Snapshot | None = None,
) -> tuple[dict[str, list[float]], dict]:
    """The student (or the baseline): trained dense like the experts, then its indexer warmed up like theirs before it runs sparse.

    Returns the training curves and the warm-up's metrics (recall and KL before and after), or
    {"attention": "dense"} for a student without an indexer (a Llama, a Qwen).
    """
    curves = train_student(model, tokenizer, rows, cfg, seed=seed, progress=train_progress, teacher_ids=teacher_ids, snapshot=train_snapshot)
    return curves, warm_up(model, tokenizer, rows, warmup, seed=seed, progress=warmup_progress, snapshot=warmup_snapshot)


def warm_up(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, rows: Sequence[Mapping], warmup: WarmupConfig, *, seed: int,
            progress: ProgressFn | None = None, snapshot: Snapshot | None = None) -> dict:
    """Warm up the indexer of a model trained dense, on `rows` (prompt, completion), before it runs
    sparse: its recall and KL before and after, or {"attention": "dense"} for a model without one."""
    if not attention_modules(model):
        return {"attention": "dense"}
    # Few training rows (smoke runs) leave fewer to hold out for the recall measurement.
    held_out = min(warmup.eval_examples, len(rows) // 2)
    metrics = warmup_indexer(model, tokenizer, rows, warmup.model_copy(update={"eval_examples": held_out}), seed=seed, progress=progress,
                             snapshot=snapshot)
    metrics.pop("losses")
    return {**metrics, "attention": "dsa"}


def _kd_term(logits: torch.Tensor, chosen: Sequence[Example], cfg: DistillConfig) -> torch.Tensor:
    """Mean per-token divergence over every generated token of the batch that has teacher top-k."""
    rows = torch.tensor([r for r, e in enumerate(chosen) for _ in e.kd_pos], dtype=torch.long)
    pred = torch.tensor([p - 1 for e in chosen for p in e.kd_pos], dtype=torch.long)
    if len(pred) == 0:
        return logits.sum() * 0.0
    ids = torch.from_numpy(np.concatenate([e.topk_ids for e in chosen if e.kd_pos])).to(logits.device)
    lps = torch.from_numpy(np.concatenate([e.topk_logprobs for e in chosen if e.kd_pos]).astype(np.float32)).to(logits.device)
    return topk_kd_loss(logits[rows.to(logits.device), pred.to(logits.device)], ids, lps, cfg.kd.loss, cfg.kd.beta, cfg.kd.tail).mean()  # type: ignore[arg-type]
