"""On-policy distillation (OPD): the student samples, each domain's expert grades every token.

After off-policy distillation the student has only imitated the experts' own samples; on its own
samples it makes mistakes no expert sample shows. Here, per round, the student samples completions
for prompts of every domain; the domain's expert scores the student's sequences (a forward pass:
its full next-token distribution at every position the student sampled), and the student minimises
the per-token reverse KL to it, KL(student || expert), over the whole vocabulary: GKD with λ = 1
(all on-policy) and the reverse direction (mode-seeking), several teachers routed by domain as in
multi-teacher OPD (DeepSeek-V4, the MOPD paper). The expert is read only: it needs no sampling, no
optimizer, no gradient.

Teachers and student share one vocabulary: a student of another family is refused at load
(`flows/config.py`), as token-level KD is.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Mapping, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from distill.losses import opd_loss
from experts.rl import PromptRounds, completion_batch, sample_mixture
from experts.sft import Precision, ProgressFn, autocast, cosine_decay, gradient_checkpointing
from experts.snapshot import Snapshot, capture, resume
from generation.types import Completion, InProcessEngineConfig, SamplingConfig, request_seed
from kernels.attention import dense_attention


class OPDConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(0, ge=0, description="on-policy distillation rounds after distill; 0 leaves the stage out of the run")
    prompts_per_step: int = Field(16, ge=1, description="prompts per round, split evenly over the domains (at least one each)")
    samples_per_prompt: int = Field(2, ge=1, description="student completions sampled per prompt")
    minibatch_size: int = Field(16, ge=1, description="samples per optimizer update; a round makes several")
    micro_batch_size: int = Field(
        4, ge=1, description="samples per forward pass within an update (gradients accumulate): full-vocabulary logits of student "
        "and teacher are [samples, length, vocabulary] each",
    )
    lr: float = Field(1e-4, gt=0, le=1.0, description="peak learning rate, decayed to 0.1x over the rounds (cosine)")
    warmup_updates: int = Field(5, ge=0, description="linear learning-rate warm-up over the first updates")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=1.0), description="how the student samples")
    engine: InProcessEngineConfig = Field(default_factory=lambda: InProcessEngineConfig(batch_size=256), description="how the student samples")
    precision: Precision = Field("fp32", description="bf16: the student's training forward under bfloat16 autocast (teachers score in their own dtype)")
    gradient_checkpointing: bool = Field(False, description="recompute the student's activations in the backward pass: less memory, about a third more time")


def token_logprobs_all(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log p(· | input_ids[:, :t+1]) over the whole vocabulary in fp32: [N, T] -> [N, T-1, V]."""
    return torch.log_softmax(model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float(), dim=-1)


def train_opd(
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    teachers: Mapping[str, PreTrainedModel],
    tasks: Mapping[str, Sequence[dict]],
    cfg: OPDConfig,
    *,
    seed: int,
    progress: ProgressFn | None = None,
    snapshot: Snapshot | None = None,
) -> tuple[dict[str, list[float]], list[dict]]:
    """Train `student` in place on its own samples of `tasks` (domain -> prompts), graded by `teachers` (domain -> expert).

    Returns the per-round curves ("loss": the mean per-token reverse KL before each round's updates
    moved the student; "verified_<domain>": the share of the round's samples the domain's verifier
    accepted, which OPD does not train on but shows whether the student's answers improve; "tokens":
    the sampled tokens the round trained on, tool results left out) and the last round's samples as
    rows (prompt, completion, domain) for the indexer warm-up that follows.

    The student trains and samples dense, as in SFT and GRPO (its indexer is warmed up afterwards);
    each expert scores as the generate stage ran it. `snapshot`: resume from it and save to it after
    rounds (`experts.snapshot`).
    """
    if missing := sorted(set(tasks) - set(teachers)):
        raise ValueError(f"train_opd: no teacher for domain(s) {', '.join(missing)}")
    # Each domain's pool drawn without repeats first, `prompts_per_step` split evenly over the domains (at least one each).
    share = max(1, cfg.prompts_per_step // len(tasks))
    rounds = {d: PromptRounds(len(pool), share, random.Random(f"{seed}:{d}")) for d, pool in tasks.items()}
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    order = random.Random(seed)
    rngs = {"order": order, **{f"rounds:{d}": r.rng for d, r in rounds.items()}}
    start, carried = resume(snapshot, student, optimizer, rngs)
    for d, r in rounds.items():
        r.order = carried.get("orders", {}).get(d, [])
    curves: dict[str, list[float]] = carried.get("curves", {"loss": [], **{f"verified_{d}": [] for d in tasks}, "tokens": []})
    updates, last_rows = carried.get("updates", 0), carried.get("last_rows", [])
    with dense_attention(student), gradient_checkpointing(student) if cfg.gradient_checkpointing else contextlib.nullcontext():
        for step in range(start, cfg.steps):
            batch = [tasks[d][i] for d in tasks for i in next(rounds[d])]
            student.eval()
            verdicts = sample_mixture(student, tokenizer, batch, cfg.samples_per_prompt, cfg.sampling, cfg.engine, seed=request_seed(seed, step))
            grouped = [t for t in batch for _ in range(cfg.samples_per_prompt)]
            for d in tasks:
                mine = [v.ok for t, (_, v) in zip(grouped, verdicts) if t["domain"] == d]
                curves[f"verified_{d}"].append(sum(mine) / len(mine))
            samples = [(t["domain"], t, c) for t, (c, _) in zip(grouped, verdicts)]
            last_rows = [{"prompt": t["prompt"], "completion": c.text, "domain": d} for d, t, c in samples]
            order.shuffle(samples)
            student.train()
            losses, tokens = [], 0
            for start in range(0, len(samples), cfg.minibatch_size):
                for group in optimizer.param_groups:
                    group["lr"] = cosine_decay(cfg.lr, (step + start / len(samples)) / cfg.steps) * min(1.0, (updates + 1) / max(1, cfg.warmup_updates))
                loss, n = _update(student, tokenizer, teachers, samples[start : start + cfg.minibatch_size], cfg.micro_batch_size, cfg.precision)
                losses.append(loss)
                tokens += n
                torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                updates += 1
            student.eval()
            curves["loss"].append(sum(losses) / len(losses))
            curves["tokens"].append(tokens)
            verified = ", ".join(f"{d} {curves[f'verified_{d}'][-1]:.2f}" for d in tasks)
            print(f"OPD round {step + 1}/{cfg.steps}: reverse KL {curves['loss'][-1]:.4f}, verified {verified}")
            if snapshot is not None and snapshot.due(step + 1, cfg.steps):
                snapshot.save(capture(step + 1, cfg.steps, student, optimizer, rngs, orders={d: r.order for d, r in rounds.items()},
                                      curves=curves, updates=updates, last_rows=last_rows))
            if progress is not None:
                progress(step + 1, cfg.steps, curves["loss"][-1])
    return curves, last_rows


def _update(
    student: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, teachers: Mapping[str, PreTrainedModel],
    samples: Sequence[tuple[str, dict, Completion]], micro: int, precision: Precision = "fp32",
) -> tuple[float, int]:
    """Accumulate the gradient of one minibatch's loss (mean over all its sampled tokens), micro-batch by
    micro-batch per domain; returns the loss and the number of sampled tokens."""
    batches = []
    for d in sorted({d for d, _, _ in samples}):
        mine = [c for dd, _, c in samples if dd == d]
        batches += [(d, completion_batch(tokenizer, mine[start : start + micro])) for start in range(0, len(mine), micro)]
    tokens = int(sum(sampled.sum().item() for _, (_, _, sampled) in batches))
    total = 0.0
    for d, (ids, attn, sampled) in batches:
        teacher = teachers[d]
        with torch.no_grad():
            teacher_logp = token_logprobs_all(teacher, ids.to(teacher.device), attn.to(teacher.device)).to(student.device)
        ids, attn, sampled = ids.to(student.device), attn.to(student.device), sampled.to(student.device)
        with autocast(student, precision):
            student_logp = token_logprobs_all(student, ids, attn)
        loss = opd_loss(student_logp, teacher_logp, sampled, normalizer=max(1, tokens))
        loss.backward()
        total += loss.item()
    return total, tokens
