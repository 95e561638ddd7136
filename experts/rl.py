"""GRPO: reinforcement learning with the domain's verifier as the reward.

Per round: sample a group of completions for each of many prompts, score them with the verifier,
and push up the tokens of completions that beat their group's mean (group-relative advantages,
no value model), with a clipped probability ratio and a KL penalty to the SFT model
(DeepSeekMath's GRPO; V3.2 trains its specialists this way). A round's samples are spent in many
small updates, as PPO does: one update per round wastes the samples, and many rounds of a few
prompts each fit the handful of prompts in the current batch (measured in docs/architecture.md).

With V3.2's stabilisers for that reuse of samples: the KL estimate weighted by π_θ / π_old
(`unbiased_kl`), negative samples dropped once the policy drifted from the one that sampled them
(`offpolicy_delta`), and the ratio read on the sampler's own distribution (its temperature and
top-k / top-p set: `sampler_logprobs`).
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from domains.base import Verdict
from experts.heldout import sample_verdicts
from experts.lora import LoraSettings, adapters_off, lora_adapters, merged_copy
from experts.sft import Precision, ProgressFn, autocast, cosine_decay, gradient_checkpointing
from experts.snapshot import Snapshot, capture, resume
from generation.engine.sampler import warp
from generation.turns import IGNORE, mask_tool_results
from generation.types import Completion, EngineConfig, InProcessEngineConfig, SamplingConfig, request_seed
from kernels.attention import dense_attention


class RLConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(0, ge=0, description="rollout rounds after SFT; 0 turns RL off")
    prompts_per_step: int = Field(256, ge=1, description="prompts per round; each prompt of the pool is used once before any repeats")
    group_size: int = Field(8, ge=2, description="completions sampled per prompt; advantages are relative to the group")
    minibatch_size: int = Field(32, ge=1, description="samples per optimizer update; a round makes many updates")
    epochs_per_step: int = Field(1, ge=1, description="passes over a round's samples; above 1 the clip bounds how far the policy moves")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=1.0), description="how rollouts are sampled")
    engine: InProcessEngineConfig = Field(default_factory=lambda: InProcessEngineConfig(batch_size=512), description="how rollouts are generated")
    lr: float = Field(1e-4, gt=0, le=1.0, description="peak learning rate, decayed to 0.1x over the rounds (cosine, as in SFT)")
    warmup_updates: int = Field(10, ge=0, description="linear learning-rate warm-up: Adam's first updates are full-size on every weight")
    clip_eps: float = Field(0.2, gt=0, lt=1)
    negative_weight: float = Field(
        1.0, ge=0, le=1,
        description="scale of negative advantages: 1 = GRPO; 0 = reinforce only verified samples (RAFT++)",
    )
    kl_coef: float = Field(0.05, ge=0, description="weight of the KL penalty to the SFT model (importance-corrected k3 estimate)")
    offpolicy_delta: float | None = Field(
        None, gt=0, description="drop a negative-advantage sample once the policy has moved more than this from the one that sampled it "
        "(mean log-ratio per token; V3.2's off-policy sequence masking, for rounds spent in many updates); unset keeps every sample",
    )
    heldout_sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.8, top_p=0.95, max_new_tokens=128),
        description="the held-out measurement before and after RL: greedy at these lengths, and pass@1 sampled as here "
        "(as the generate stage samples, pass@1 is the expert's verified yield)",
    )
    heldout_samples: int = Field(4, ge=1, description="samples per held-out task for the sampled pass@1")
    lora: LoraSettings | None = Field(
        None, description="train low-rank adapters instead of every weight (merged into the saved expert); the KL reference is "
        "then the model with its adapters off, not a second copy, and the optimizer holds state for the adapters only",
    )
    precision: Precision = Field("fp32", description="bf16: the policy's and the reference's log-prob forwards under bfloat16 autocast")
    gradient_checkpointing: bool = Field(False, description="recompute the policy's activations in the backward pass: less memory, about a third more time")


def group_advantages(rewards: torch.Tensor, negative_weight: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean) / std within each group, negative ones scaled by `negative_weight`.

    rewards: [P, G] -> [P, G]; a group with equal rewards gets 0.
    """
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    adv = (rewards - mean) / (std + eps)
    return torch.where(adv < 0, negative_weight * adv, adv)


def unbiased_kl(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(π_θ || π_ref) from tokens the sampler drew from π_old: the k3 estimator
    exp(ref - logp) - (ref - logp) - 1 (never negative; Schulman, 2020) weighted by the importance
    ratio π_θ / π_old (DeepSeek-V3.2). k3 alone is unbiased only for tokens drawn from π_θ itself;
    after a round's first update they are not, and the weight makes the estimate and its gradient
    unbiased again. [N, T] x3 -> [N, T]."""
    delta = ref_logp - logp
    return torch.exp(logp - old_logp) * (torch.exp(delta) - delta - 1)


def offpolicy_mask(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, delta: float | None) -> torch.Tensor:
    """1 per sequence to train on, 0 to drop: a sequence with a negative advantage whose mean
    log(π_old / π_θ) over its sampled tokens exceeds `delta` (the policy has moved far from the one
    that sampled it) is dropped (V3.2's off-policy sequence masking); None keeps every sequence. [N]."""
    if delta is None:
        return torch.ones_like(advantages)
    drift = ((old_logp - logp.detach()) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return 1.0 - ((advantages < 0) & (drift > delta)).float()


def grpo_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float, kl_coef: float,
    offpolicy_delta: float | None = None,
) -> torch.Tensor:
    """Clipped policy-gradient loss plus KL to the reference (`unbiased_kl`), averaged over the sampled
    tokens of the sequences `offpolicy_mask` keeps (a dropped sequence still counts in the average,
    as V3.2 writes it, so dropping one does not scale up the others).

    logp, old_logp, ref_logp, mask: [N, T]; advantages: [N].
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    policy = -torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    per_token = policy + kl_coef * unbiased_kl(logp, old_logp, ref_logp)
    kept = offpolicy_mask(logp, old_logp, advantages, mask, offpolicy_delta)[:, None]
    return (per_token * mask * kept).sum() / mask.sum().clamp(min=1)


def token_logprobs(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) in fp32: [N, T] -> [N, T-1]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)


def sampler_logprobs(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, sampling: SamplingConfig, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log-probs of the next tokens under the distribution the sampler drew them from: the logits over
    `sampling.temperature`, renormalised over its top-k / top-p set. That set is `keep` ([N, T-1, V]),
    when given: the set of the policy that sampled (V3.2 keeps the sampling mask, so that the ratio
    compares the two policies on one action space); else it is computed here and returned with the
    log-probs ([N, T-1]), or None when sampling truncates nothing. The sampled token is always in it.
    A mask costs one byte per vocabulary entry per token: keep rollouts short or untruncated on a large vocabulary."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    temperature = sampling.temperature or 1.0  # greedy rollouts have one distribution to train: the model's
    nxt = input_ids[:, 1:, None]
    if keep is None and (sampling.top_p < 1.0 or 0 < sampling.top_k < logits.shape[-1]):
        keep = torch.isfinite(warp(logits.detach(), temperature, sampling.top_p, sampling.top_k)).scatter_(-1, nxt, True)
    scaled = logits / temperature if keep is None else (logits / temperature).masked_fill(~keep, float("-inf"))
    return torch.log_softmax(scaled, dim=-1).gather(-1, nxt).squeeze(-1), keep


def completion_batch(tokenizer: PreTrainedTokenizerFast, completions: Sequence[Completion]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, and the mask of tokens the model sampled (tool results excluded)."""
    width = max(len(c.ids) for c in completions)
    ids = torch.full((len(completions), width), tokenizer.pad_token_id)
    attn = torch.zeros((len(completions), width), dtype=torch.long)
    sampled = torch.zeros((len(completions), width - 1))
    for row, c in enumerate(completions):
        ids[row, : len(c.ids)] = torch.tensor(c.ids)
        attn[row, : len(c.ids)] = 1
        labels = mask_tool_results(tokenizer, c.ids, [IGNORE] * c.prompt_len + c.ids[c.prompt_len :])
        sampled[row, : len(c.ids) - 1] = torch.tensor([float(x != IGNORE) for x in labels[1:]])
    return ids, attn, sampled


class PromptRounds:
    """Endless rounds of `size` task indices out of `n`; every task is drawn once before any repeats.

    Its state is `rng`'s and `order` (the tasks of the current pass not yet drawn), so that a
    snapshot can hold it.
    """

    def __init__(self, n: int, size: int, rng: random.Random) -> None:
        self.n, self.size, self.rng = n, size, rng
        self.order: list[int] = []

    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        batch = []
        while len(batch) < min(self.size, self.n):
            if not self.order:
                self.order = self.rng.sample(range(self.n), self.n)
            batch.append(self.order.pop())
        return batch


def sample_mixture(
    policy: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, tasks: Sequence[dict], samples: int, sampling: SamplingConfig,
    engine: EngineConfig, *, seed: int,
) -> list[tuple[Completion, Verdict]]:
    """`samples` completions of each task (task i's are items i*samples ...), each judged by its own domain's verifier."""
    by_domain: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_domain.setdefault(task["domain"], []).append(i)
    out: list = [None] * (len(tasks) * samples)
    for j, (d, idx) in enumerate(sorted(by_domain.items())):
        domain_seed = seed if len(by_domain) == 1 else request_seed(seed, j)
        verdicts = sample_verdicts(policy, tokenizer, d, [tasks[i] for i in idx], samples, sampling, engine, seed=domain_seed)
        for k, i in enumerate(idx):
            out[i * samples : (i + 1) * samples] = verdicts[k * samples : (k + 1) * samples]
    return out


def train_grpo(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    tasks: Sequence[dict],
    cfg: RLConfig,
    *,
    seed: int,
    progress: ProgressFn | None = None,
    snapshot: Snapshot | None = None,
) -> dict[str, list[float]]:
    """Improve `model` in place on `tasks`, each rewarded by its own domain's verifier (one domain for an
    expert, every domain for the student's mixed RL); returns the mean reward of each round's samples,
    "reward" over all and "reward_<domain>" per domain (None for a round without that domain's tasks).

    `seed` draws the rounds' prompts, their samples and the minibatch order. `snapshot`: resume from
    it and save to it after rounds (`experts.snapshot`).

    Runs dense, like SFT: RL comes before the indexer warm-up, and a policy sampled and trained
    under the untrained indexer's sparse selection learns that selection (docs/experiments.md).
    """
    if not tasks:
        raise ValueError("train_grpo got no tasks")
    domains = sorted({t["domain"] for t in tasks})
    curves: dict[str, list] = {"reward": [], **{f"reward_{d}": [] for d in domains}}
    checkpointing = gradient_checkpointing(model) if cfg.gradient_checkpointing else contextlib.nullcontext()
    with lora_adapters(model, cfg.lora), dense_attention(model), checkpointing:
        # The SFT model the KL term holds the policy to: under LoRA the model itself with its adapters off.
        reference = model if cfg.lora else copy.deepcopy(model).eval()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
        rng = random.Random(seed)
        rounds = PromptRounds(len(tasks), cfg.prompts_per_step, rng)
        # After the reference copy: a resumed policy is still held to the model GRPO started from.
        start, carried = resume(snapshot, model, optimizer, {"rng": rng})
        rounds.order, updates, curves = carried.get("order", []), carried.get("updates", 0), carried.get("curves", curves)
        for step in range(start, cfg.steps):
            batch_tasks = [tasks[i] for i in next(rounds)]
            policy = merged_copy(model) if cfg.lora else model
            verdicts = sample_mixture(policy, tokenizer, batch_tasks, cfg.group_size, cfg.sampling, cfg.engine, seed=request_seed(seed, step))
            del policy
            completions = [c for c, _ in verdicts]
            rewards = torch.tensor([v.score for _, v in verdicts], device=model.device)
            curves["reward"].append(rewards.mean().item())
            by_task = rewards.view(len(batch_tasks), cfg.group_size).mean(dim=1).tolist()
            for d in domains:
                mine = [r for t, r in zip(batch_tasks, by_task) if t["domain"] == d]
                curves[f"reward_{d}"].append(sum(mine) / len(mine) if mine else None)
            advantages = group_advantages(rewards.view(len(batch_tasks), cfg.group_size), cfg.negative_weight).flatten()
            # A sample whose group all scored alike has no advantage: only the KL term would train on it.
            kept = [i for i in range(len(completions)) if advantages[i] != 0]
            # Random minibatches, not length-grouped ones: a group's samples have similar lengths, so a
            # length-sorted minibatch would hold a few prompts' samples and each update would fit those few.
            rng.shuffle(kept)
            minibatches = []
            for start in range(0, len(kept), cfg.minibatch_size):
                idx = kept[start : start + cfg.minibatch_size]
                ids, attn, sampled = (t.to(model.device) for t in completion_batch(tokenizer, [completions[i] for i in idx]))
                # In the precision of the update's forward: the first update's ratio to the sampling policy is then exactly 1.
                with torch.no_grad(), autocast(model, cfg.precision):
                    old_logp, keep = sampler_logprobs(model, ids, attn, cfg.sampling)
                    with adapters_off(model) if cfg.lora else contextlib.nullcontext():
                        ref_logp = token_logprobs(reference, ids, attn)
                minibatches.append((ids, attn, sampled, old_logp, keep, ref_logp, advantages[idx]))
            model.train()
            round_updates = cfg.epochs_per_step * len(minibatches)
            for epoch in range(cfg.epochs_per_step):
                for j, (ids, attn, sampled, old_logp, keep, ref_logp, adv) in enumerate(rng.sample(minibatches, len(minibatches))):
                    done = (step + (epoch * len(minibatches) + j) / round_updates) / cfg.steps
                    for group in optimizer.param_groups:
                        group["lr"] = cosine_decay(cfg.lr, done) * min(1.0, (updates + 1) / max(1, cfg.warmup_updates))
                    with autocast(model, cfg.precision):
                        logp, _ = sampler_logprobs(model, ids, attn, cfg.sampling, keep)
                    loss = grpo_loss(logp, old_logp, ref_logp, adv, sampled, cfg.clip_eps, cfg.kl_coef, cfg.offpolicy_delta)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    updates += 1
            model.eval()
            by_domain = "".join(f", {d} {curves[f'reward_{d}'][-1]:.3f}" for d in domains if len(domains) > 1 and curves[f"reward_{d}"][-1] is not None)
            print(f"GRPO round {step + 1}/{cfg.steps}: reward {curves['reward'][-1]:.3f}{by_domain}, {len(kept)} of {len(completions)} samples with an advantage")
            if snapshot is not None and snapshot.due(step + 1, cfg.steps):
                snapshot.save(capture(step + 1, cfg.steps, model, optimizer, {"rng": rng}, order=rounds.order, updates=updates, curves=curves))
            if progress is not None:
                progress(step + 1, cfg.steps, curves["reward"][-1])
        return curves
