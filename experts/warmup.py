"""Dense warm-up of the DSA lightning indexer (DeepSeek-V3.2, section 2.1.1 "Dense Warm-up Stage").

Before sparse training, V3.2 trains only the indexer, with the main model frozen and attention kept
dense, so that the index scores mimic the main attention: for each query t the target p[t, :] is
the layer's attention distribution summed across all attention heads and L1-normalised, and the
loss is KL(p[t, :] || softmax(I[t, :])) summed over queries.

transformers' `DeepseekV32Indexer.forward` runs under `torch.no_grad` and only returns the top-k
indices, so this module recomputes the index scores with gradients (`indexer_logits`, a line-by-line
mirror of that forward without the cache) and the dense attention probabilities
(`attention_target`, a mirror of `DeepseekV32Attention.forward`). The per-layer inputs come from a
frozen forward pass of the model run dense (`dense_attention`), captured by forward pre-hooks on
every attention module (`capture_attention_inputs`).

Public API:
    WarmupConfig                      pydantic config of `warmup_indexer`
    warmup_indexer(model, tok, examples, cfg, seed=..., progress=None) -> metrics dict
    indexer_recall(model, batches, k=None) -> float
    evaluate_indexer(model, batches, k=None) -> {"recall", "kl"}
    indexer_logits(attn, hidden_states, position_embeddings, attention_mask) -> [B, S, T]
    attention_target(attn, hidden_states, position_embeddings, attention_mask) -> [B, S, T]
    indexer_kl(logits, target, valid) -> scalar
    dense_attention(model)            context manager: every indexer keeps all tokens
    indexer_parameters(model)         the trainable (name, parameter) pairs
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerFast
from transformers.models.deepseek_v32.modeling_deepseek_v32 import (
    DeepseekV32Attention,
    apply_rotary_pos_emb_interleave,
    repeat_kv,
)

from experts.sft import ProgressFn, collate, encode
from experts.snapshot import Snapshot, capture, resume
from kernels.attention import allowed_mask, dense_attention
from kernels.mla import indexer_projections


class WarmupConfig(BaseModel):
    """Indexer dense warm-up. V3.2 used lr 1e-3 for 1000 steps of 16 x 128K tokens."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(200, ge=1, description="optimizer steps (AdamW on the indexer parameters only)")
    batch_size: int = Field(16, ge=1, description="sequences per step")
    lr: float = Field(1e-3, gt=0, le=1.0, description="constant AdamW learning rate")
    max_len: int = Field(256, ge=8, description="tokens per example; longer ones are cut")
    eval_examples: int = Field(
        32,
        ge=0,
        description="examples held out of training to measure recall/KL before and after; 0 skips the measurement",
    )


# --------------------------------------------------------------------------- per-layer maths


def indexer_logits(
    attn: DeepseekV32Attention,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Index scores I[b,s,t] = sum_j w[b,s,j] * relu(scale * q_I[b,s,j] . k_I[b,t]), with gradients.

    Mirrors `DeepseekV32Indexer.forward` (same half-split RoPE on the first qk_rope_head_dim dims,
    same softmax_scale inside the ReLU, same weights_proj * n_heads**-0.5) without `no_grad` and
    without a cache; q_resid is recomputed as the attention module does,
    `q_a_layernorm(q_a_proj(hidden_states))`.

    Args:
        attn: the layer's `DeepseekV32Attention` (its `indexer` supplies wq_b, wk, k_norm, weights_proj).
        hidden_states: [B, S, hidden] input of the attention module (after input_layernorm).
        position_embeddings: (cos, sin) from the model's rotary embedding.
        attention_mask: the layer's mask, [B, 1, S, T] or [B, S, T], bool or additive float.

    Returns:
        [B, S, T] fp32 scores, -inf where the causal/padding mask forbids the key. Its top-k is the
        selection of the real indexer (which adds the mask instead of -inf, the same order for
        visible keys).
    """
    q_resid = attn.q_a_layernorm(attn.q_a_proj(hidden_states))
    q, k, weights = indexer_projections(attn, hidden_states, q_resid, position_embeddings)
    scores = F.relu(torch.matmul(q.float(), k.transpose(-1, -2).float().unsqueeze(1)) * attn.indexer.softmax_scale)  # [B, S, HI, T]
    index_scores = torch.matmul(weights.unsqueeze(-2), scores).squeeze(-2)  # [B, S, T]
    return index_scores.masked_fill(~allowed_mask(attention_mask), float("-inf"))


def attention_target(
    attn: DeepseekV32Attention,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Dense main-attention distribution, summed over heads and L1-normalised per query: [B, S, T] fp32.

    softmax(Q K^T * scaling + mask) with Q, K built exactly as `DeepseekV32Attention.forward` does
    (MLA: q_a_proj -> q_a_layernorm -> q_b_proj; kv_a_proj_with_mqa -> kv_a_layernorm -> kv_b_proj;
    interleaved RoPE), no cache, no indexer selection. Computed in fp32 and without gradients.
    A query with no visible key gets an all-zero row.
    """
    with torch.no_grad():
        batch_size, seq_len = hidden_states.shape[:-1]
        q_resid = attn.q_a_layernorm(attn.q_a_proj(hidden_states))
        q_states = attn.q_b_proj(q_resid).view(batch_size, seq_len, -1, attn.qk_head_dim).transpose(1, 2)
        q_pass, q_rot = torch.split(q_states, [attn.qk_nope_head_dim, attn.qk_rope_head_dim], dim=-1)
        compressed_kv = attn.kv_a_proj_with_mqa(hidden_states)
        kv_pass, k_rot = torch.split(compressed_kv, [attn.kv_lora_rank, attn.qk_rope_head_dim], dim=-1)
        k_pass = attn.kv_a_layernorm(kv_pass).view(batch_size, 1, seq_len, attn.kv_lora_rank)
        k_rot = k_rot.view(batch_size, 1, seq_len, attn.qk_rope_head_dim)
        cos, sin = position_embeddings
        q_rot, k_rot = apply_rotary_pos_emb_interleave(q_rot, k_rot, cos, sin)
        query = torch.cat((q_pass, q_rot), dim=-1)
        key, _ = attn.expand_kv(k_pass, k_rot)
        key = repeat_kv(key, attn.num_key_value_groups)

        logits = torch.matmul(query.float(), key.float().transpose(2, 3)) * attn.scaling  # [B, H, S, T]
        allowed = allowed_mask(attention_mask)[:, None]
        logits = logits.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # fully masked rows -> zeros
        summed = probs.sum(dim=1)  # [B, S, T]
        return summed / summed.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(summed.dtype).tiny)


def indexer_kl(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid queries of KL(target[b,s,:] || softmax(logits[b,s,:])).

    Args:
        logits: [B, S, T] index scores, -inf at masked keys (a row may be all -inf).
        target: [B, S, T] per-query distributions (zero at masked keys).
        valid: [B, S] bool, the queries that count (real tokens with at least one visible key).

    -inf logits are handled without NaNs in value or gradient: all -inf rows are replaced before the
    log_softmax, and 0 * log 0 terms count as 0. Returns 0 (with a graph) when no query is valid.
    """
    finite = torch.isfinite(logits)
    usable = valid & finite.any(dim=-1)
    logits = logits.masked_fill(~usable[..., None], 0.0)
    logp = torch.log_softmax(logits, dim=-1)
    logp = torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))
    target = target.float()
    per_query = (torch.xlogy(target, target) - target * logp).sum(dim=-1)  # [B, S]
    per_query = per_query.masked_fill(~usable, 0.0)
    return per_query.sum() / usable.sum().clamp_min(1)


# --------------------------------------------------------------------------- model plumbing


def attention_modules(model: nn.Module) -> list[DeepseekV32Attention]:
    """Every DSA attention layer of the model, in layer order."""
    return [m for m in model.modules() if isinstance(m, DeepseekV32Attention)]


def indexer_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every indexer weight: wq_b, wk, k_norm, weights_proj of each layer."""
    return [(n, p) for n, p in model.named_parameters() if ".indexer." in f".{n}"]


@dataclass
class LayerInputs:
    """What one attention layer received in a forward pass (detached)."""

    hidden_states: torch.Tensor  # [B, S, hidden]
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    attention_mask: torch.Tensor  # [B, 1, S, T] as the layer got it


@contextlib.contextmanager
def capture_attention_inputs(model: nn.Module) -> Iterator[list[LayerInputs]]:
    """Forward pre-hooks on every attention module; the yielded list fills, in layer order, per forward."""
    captured: list[LayerInputs] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        pos = kwargs["position_embeddings"] if "position_embeddings" in kwargs else args[1]
        mask = kwargs["attention_mask"] if "attention_mask" in kwargs else args[2]
        if mask is None:
            raise ValueError("attention layer got no mask; DeepseekV32 always builds one")
        captured.append(LayerInputs(hidden.detach(), (pos[0].detach(), pos[1].detach()), mask.detach()))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in attention_modules(model)]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def layer_inputs(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> list[LayerInputs]:
    """Run the frozen model DENSE on `batch` (no grad, no cache) and return each attention layer's inputs."""
    base = getattr(model, "model", model)  # skip the LM head when there is a base model
    with torch.no_grad(), dense_attention(model), capture_attention_inputs(model) as captured:
        base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return captured


def valid_queries(batch: dict[str, torch.Tensor], inputs: LayerInputs) -> torch.Tensor:
    """[B, S] bool: real (non-padding) tokens that see at least one key."""
    real = batch["attention_mask"].bool().to(inputs.hidden_states.device)
    return real & allowed_mask(inputs.attention_mask).any(dim=-1)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


# --------------------------------------------------------------------------- evaluation


def evaluate_indexer(model: PreTrainedModel, batches: Sequence[dict[str, torch.Tensor]], k: int | None = None) -> dict[str, float]:
    """Recall of the top-k selection and KL to the dense target, pooled over layers and queries.

    recall: share of the true attention mass (dense, summed over heads, L1-normalised) inside the
        indexer's top-k (k = model.config.index_topk by default). Only valid queries with MORE than
        k visible tokens count: with k or fewer the selection holds every visible token and recall
        is trivially 1. NaN when no such query exists.
    kl: mean over all valid queries of KL(target || softmax(index scores)).

    `batches` are `experts.sft.collate`-style dicts (input_ids, attention_mask; other keys ignored).
    """
    k = model.config.index_topk if k is None else k
    device = _device(model)
    recall_sum, recall_n, kl_sum, kl_n = 0.0, 0, 0.0, 0
    with torch.no_grad():
        for batch in batches:
            batch = _to(batch, device)
            for attn, inp in zip(attention_modules(model), layer_inputs(model, batch), strict=True):
                logits = indexer_logits(attn, inp.hidden_states, inp.position_embeddings, inp.attention_mask)
                target = attention_target(attn, inp.hidden_states, inp.position_embeddings, inp.attention_mask)
                valid = valid_queries(batch, inp)
                n_valid = int(valid.sum())
                kl_sum += indexer_kl(logits, target, valid).item() * n_valid
                kl_n += n_valid
                counted = valid & (allowed_mask(inp.attention_mask).sum(dim=-1) > k)
                if counted.any():
                    sel = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
                    mass = target.gather(-1, sel).sum(dim=-1)
                    recall_sum += mass[counted].sum().item()
                    recall_n += int(counted.sum())
    return {
        "recall": recall_sum / recall_n if recall_n else math.nan,
        "kl": kl_sum / kl_n if kl_n else math.nan,
    }


def indexer_recall(model: PreTrainedModel, batches: Sequence[dict[str, torch.Tensor]], k: int | None = None) -> float:
    """Share of the true attention mass that falls inside the indexer's top-k selection.

    The true attention is the dense main attention of each layer, summed over heads and
    L1-normalised per query; k defaults to model.config.index_topk. Averaged over valid (non-padding)
    queries and layers, counting ONLY queries with more than k visible tokens: for the others the
    top-k holds every visible token and recall is trivially 1. NaN if no query qualifies.
    """
    return evaluate_indexer(model, batches, k)["recall"]


# --------------------------------------------------------------------------- training


def _length_sorted_batches(encoded: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    return [collate([encoded[i] for i in order[s : s + batch_size]], pad_id) for s in range(0, len(order), batch_size)]


def warmup_indexer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[dict],
    cfg: WarmupConfig,
    *,
    seed: int,
    progress: ProgressFn | None = None,
    snapshot: Snapshot | None = None,
) -> dict:
    """Dense warm-up: train only the indexers (in place) to match the frozen model's dense attention.

    Every parameter except the indexers' (wq_b, wk, k_norm, weights_proj) is frozen; each step runs
    the frozen model dense on a batch of `examples` (dicts with prompt and completion, tokenized as
    prompt completion [EOS] by `experts.sft.encode`), recomputes every layer's index scores
    with gradients and minimises the KL to the layer's head-summed, normalised attention (mean over
    layers of the mean over valid queries). `cfg.eval_examples` examples (chosen by `seed`) are held
    out of training and measured before and after. `snapshot`: resume from it and save to it as
    training goes (`experts.snapshot`).

    requires_grad flags, train/eval mode and index_topk are restored on exit.

    Returns:
        {"recall_before", "recall_after", "kl_before", "kl_after": float | None (None when
        eval_examples == 0), "losses": per-step training loss, "train_examples", "eval_examples"}.
    """
    if len(examples) <= cfg.eval_examples:
        raise ValueError(f"warmup_indexer needs more than eval_examples={cfg.eval_examples} examples, got {len(examples)}")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    order = rng.sample(range(len(examples)), len(examples))
    held, train = order[: cfg.eval_examples], order[cfg.eval_examples :]

    def encode_ex(i: int) -> tuple[list[int], list[int]]:
        return encode(tokenizer, examples[i]["prompt"], examples[i]["completion"], True, cfg.max_len)

    train_enc = [encode_ex(i) for i in train]
    eval_batches = _length_sorted_batches([encode_ex(i) for i in held], cfg.batch_size, tokenizer.pad_token_id)

    params = indexer_parameters(model)
    if not params:
        raise ValueError("model has no DSA indexer parameters")
    trainable_ids = {id(p) for _, p in params}
    saved_flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    device = _device(model)
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable_ids)
        model.eval()
        before = evaluate_indexer(model, eval_batches) if eval_batches else None

        optimizer = torch.optim.AdamW([p for _, p in params], lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
        attns = attention_modules(model)
        start, carried = resume(snapshot, model, optimizer, {"queue": rng})
        queue: list[int] = carried.get("queue", [])
        losses: list[float] = carried.get("losses", [])
        for step in range(start, cfg.steps):
            if len(queue) < cfg.batch_size:
                queue += rng.sample(range(len(train_enc)), len(train_enc))
            chosen, queue = queue[: cfg.batch_size], queue[cfg.batch_size :]
            batch = _to(collate([train_enc[i] for i in chosen], tokenizer.pad_token_id), device)
            inputs = layer_inputs(model, batch)
            loss = torch.zeros((), device=device)
            for attn, inp in zip(attns, inputs, strict=True):
                target = attention_target(attn, inp.hidden_states, inp.position_embeddings, inp.attention_mask)
                logits = indexer_logits(attn, inp.hidden_states, inp.position_embeddings, inp.attention_mask)
                loss = loss + indexer_kl(logits, target, valid_queries(batch, inp))
            loss = loss / len(attns)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if snapshot is not None and snapshot.due(step + 1, cfg.steps):
                snapshot.save(capture(step + 1, cfg.steps, model, optimizer, {"queue": rng}, queue=queue, losses=losses))
            if progress is not None:
                progress(step + 1, cfg.steps, losses[-1])

        after = evaluate_indexer(model, eval_batches) if eval_batches else None
    finally:
        for p, flag in saved_flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return {
        "recall_before": before["recall"] if before else None,
        "recall_after": after["recall"] if after else None,
        "kl_before": before["kl"] if before else None,
        "kl_after": after["kl"] if after else None,
        "losses": losses,
        "train_examples": len(train),
        "eval_examples": len(held),
    }
