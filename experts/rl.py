"""GRPO: reinforcement learning with the domain's verifier as the reward.

Per step: sample a group of completions for each of a few prompts, score them with the verifier,
and push up the tokens of completions that beat their group's mean (group-relative advantages,
no value model), with a clipped probability ratio and a KL penalty to the SFT model
(DeepSeekMath's GRPO; V3.2 trains its specialists this way).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from experts.domains import get_domain
from experts.generation import Completion, GenerateConfig, Request, generate
from experts.sft import IGNORE, ProgressFn, mask_tool_results
from kernels.attention import dense_attention


class RLConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(0, ge=0, description="GRPO steps after SFT; 0 turns RL off")
    prompts_per_step: int = Field(8, ge=1)
    group_size: int = Field(8, ge=2, description="completions sampled per prompt; advantages are relative to the group")
    temperature: float = Field(1.0, gt=0.0)
    max_new_tokens: int = Field(96, ge=1)
    max_tool_turns: int = Field(4, ge=0)
    lr: float = Field(1e-4, gt=0, le=1.0)
    epochs_per_step: int = Field(2, ge=1, description="policy updates per batch of samples; above 1 the clip matters")
    clip_eps: float = Field(0.2, gt=0, lt=1)
    negative_weight: float = Field(
        1.0, ge=0, le=1,
        description="scale of negative advantages: 1 = GRPO; lower keeps failed samples from spreading probability mass "
        "(a tiny model's entropy grows and its reward falls at 1); 0 = reinforce only verified samples (RAFT++)",
    )
    kl_coef: float = Field(0.05, ge=0, description="weight of the KL penalty to the SFT model")
    seed: int = 0


def group_advantages(rewards: torch.Tensor, negative_weight: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean) / std within each group, negative ones scaled by `negative_weight`.

    rewards: [P, G] -> [P, G]; a group with equal rewards gets 0.
    """
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    adv = (rewards - mean) / (std + eps)
    return torch.where(adv < 0, negative_weight * adv, adv)


def grpo_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float, kl_coef: float
) -> torch.Tensor:
    """Clipped policy-gradient loss plus KL to the reference, averaged over the sampled tokens.

    logp, old_logp, ref_logp, mask: [N, T]; advantages: [N]. The KL uses the k3 estimator
    exp(ref - logp) - (ref - logp) - 1, which is unbiased and never negative (Schulman, 2020).
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    policy = -torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    delta = ref_logp - logp
    kl = torch.exp(delta) - delta - 1
    per_token = policy + kl_coef * kl
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def token_logprobs(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) in fp32: [N, T] -> [N, T-1]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)


def _batch(tokenizer: PreTrainedTokenizerFast, completions: Sequence[Completion]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def train_grpo(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    domain_name: str,
    tasks: Sequence[dict],
    cfg: RLConfig,
    progress: ProgressFn | None = None,
) -> list[float]:
    """Improve `model` in place on `tasks`; returns the mean verifier reward of each step's samples.

    Runs dense, like SFT: RL comes before the indexer warm-up, and a policy sampled and trained
    under the untrained indexer's sparse selection learns that selection (see docs/architecture.md).
    """
    with dense_attention(model):
        return _train_grpo(model, tokenizer, domain_name, tasks, cfg, progress)


def _train_grpo(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    domain_name: str,
    tasks: Sequence[dict],
    cfg: RLConfig,
    progress: ProgressFn | None,
) -> list[float]:
    domain = get_domain(domain_name)
    reference = copy.deepcopy(model).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(cfg.seed)
    sample_cfg = GenerateConfig(
        samples_per_prompt=1, temperature=cfg.temperature, top_p=1.0, max_new_tokens=cfg.max_new_tokens, max_tool_turns=cfg.max_tool_turns,
        batch_size=cfg.prompts_per_step * cfg.group_size, seed=cfg.seed, attention="sdpa",
    )
    mean_rewards = []
    for step in range(cfg.steps):
        batch_tasks = rng.sample(list(tasks), min(cfg.prompts_per_step, len(tasks)))
        grouped = [t for t in batch_tasks for _ in range(cfg.group_size)]
        requests = [Request(t["prompt"], domain.environment(t)) for t in grouped]
        completions = generate(model, tokenizer, requests, sample_cfg.model_copy(update={"seed": cfg.seed + step}))
        rewards = torch.tensor([domain.verify(t, c.text).score for t, c in zip(grouped, completions)])
        mean_rewards.append(rewards.mean().item())
        advantages = group_advantages(rewards.view(len(batch_tasks), cfg.group_size), cfg.negative_weight).flatten()
        if advantages.abs().sum() > 0:
            ids, attn, sampled = _batch(tokenizer, completions)
            with torch.no_grad():
                old_logp = token_logprobs(model, ids, attn)
                ref_logp = token_logprobs(reference, ids, attn)
            model.train()
            for _ in range(cfg.epochs_per_step):
                loss = grpo_loss(token_logprobs(model, ids, attn), old_logp, ref_logp, advantages, sampled, cfg.clip_eps, cfg.kl_coef)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            model.eval()
        if progress is not None:
            progress(step + 1, cfg.steps, mean_rewards[-1])
    return mean_rewards
