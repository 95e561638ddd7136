"""GRPO pieces against their plain formulas, and one real step on a tiny model."""

import json
import math
import random

import pytest
import torch

from domains import get_domain
from experts.heldout import EvalConfig, pass_at_1
from experts.lora import LoraSettings
from experts.model import ModelConfig, build_model
from experts.rl import RLConfig, group_advantages, grpo_loss, prompt_rounds, train_grpo
from experts.sft import TrainConfig, train_sft
from experts.tokenizer import train_tokenizer
from generation.types import EngineConfig, SamplingConfig


def test_group_advantages_are_relative_to_the_group():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    adv = group_advantages(rewards)
    assert torch.allclose(adv.mean(dim=1), torch.zeros(3), atol=1e-6)
    assert torch.all(adv[1] == 0)  # no signal when every sample scores the same
    std = rewards[2].std().item()
    assert adv[2, 3].item() == pytest.approx((1 - 0.25) / (std + 1e-4), rel=1e-5)
    # negative_weight scales only the samples below their group's mean (0: reinforce verified samples only).
    scaled = group_advantages(rewards, negative_weight=0.25)
    assert torch.equal(scaled[adv > 0], adv[adv > 0]) and torch.allclose(scaled[adv < 0], 0.25 * adv[adv < 0])
    assert torch.all(group_advantages(rewards, negative_weight=0.0) >= 0)


def test_grpo_loss_matches_the_formula_token_by_token():
    torch.manual_seed(0)
    logp, old, ref = (torch.randn(3, 5) * 0.3 - 1 for _ in range(3))
    adv = torch.tensor([1.5, -0.5, 0.2])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.float)
    eps, beta = 0.2, 0.1
    total, count = 0.0, 0
    for i in range(3):
        for t in range(5):
            if not mask[i, t]:
                continue
            r = math.exp(logp[i, t] - old[i, t])
            pg = -min(r * adv[i], min(max(r, 1 - eps), 1 + eps) * adv[i])
            d = ref[i, t] - logp[i, t]
            total += pg + beta * (math.exp(d) - d - 1)
            count += 1
    assert grpo_loss(logp, old, ref, adv, mask, eps, beta).item() == pytest.approx(float(total) / count, rel=1e-5)


def test_prompt_rounds_use_every_prompt_once_before_repeating():
    rounds = prompt_rounds(10, 4, random.Random(3))
    drawn = [i for _ in range(5) for i in next(rounds)]
    assert sorted(drawn[:10]) == list(range(10))
    assert sorted(drawn[10:20]) == list(range(10))
    # A round never asks for more prompts than there are.
    assert sorted(next(prompt_rounds(3, 8, random.Random(0)))) == [0, 1, 2]


def test_grpo_without_reward_signal_changes_nothing():
    domain = get_domain("math")
    tasks = domain.make_tasks(8, seed=0)
    tok = train_tokenizer([t["prompt"] + t["completion"] for t in tasks] * 4, 300)
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = RLConfig(steps=2, prompts_per_step=2, group_size=4, sampling=SamplingConfig(temperature=1.0, max_new_tokens=8))
    rewards = train_grpo(model, tok, "math", tasks, cfg, seed=0)
    # A random model never solves a word problem: all-zero rewards carry no advantage, and GRPO
    # must leave the weights untouched rather than drift on noise.
    assert rewards == [0.0, 0.0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_pass_at_1_is_the_verifiers_mean_over_samples():
    domain = get_domain("math")
    solved, other = [t for t in domain.make_tasks(20, seed=1) if "Answer" in t["completion"]][:2]
    assert json.loads(solved["meta"])["answer"] != json.loads(other["meta"])["answer"]
    tok = train_tokenizer([t["prompt"] + t["completion"] for t in (solved, other)] * 4, 300)
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, seed=0)
    cfg, engine = SamplingConfig(max_new_tokens=24, temperature=0.2), EngineConfig()
    assert pass_at_1(model, tok, "math", [solved, other], cfg, engine, 3, seed=0) == [0.0, 0.0]
    # Memorise one task's worked solution: every sample then solves it, and the other task (a
    # different answer) stays unsolved.
    train_sft(model, tok, [solved], TrainConfig(steps=200, batch_size=1, lr=3e-3, warmup_steps=0), seed=0)
    assert pass_at_1(model, tok, "math", [solved], cfg, engine, 3, seed=0) == [1.0]
    assert pass_at_1(model, tok, "math", [solved, other], cfg, engine, 3, seed=0) == [1.0, 0.0]


def test_in_process_sampling_refuses_vllm():
    # RL rollouts and held-out measurements sample the model in memory; vLLM would serve the checkpoint on disk.
    with pytest.raises(ValueError, match="engine.backend"):
        RLConfig(engine={"backend": "vllm"})
    with pytest.raises(ValueError, match="engine.backend"):
        EvalConfig(engine={"backend": "vllm"})


def test_grpo_under_lora_moves_the_weights_by_a_low_rank_update():
    """Only adapters train (the optimizer holds nothing else), the KL reference is the model with its
    adapters off, and the merged result differs from the SFT model by at most rank r per matrix."""
    domain = get_domain("math")
    solved = next(t for t in domain.make_tasks(20, seed=1) if "Answer" in t["completion"])
    tok = train_tokenizer([solved["prompt"] + solved["completion"]] * 4, 300)
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, seed=0)
    train_sft(model, tok, [solved], TrainConfig(steps=200, batch_size=1, lr=3e-3, warmup_steps=0), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rank = 2
    # Hot sampling: some of a group's samples miss the memorised answer, so the group has an advantage.
    cfg = RLConfig(steps=2, prompts_per_step=1, group_size=8, minibatch_size=8, lr=1e-2, warmup_updates=0,
                   sampling=SamplingConfig(temperature=1.3, max_new_tokens=24), lora=LoraSettings(r=rank, alpha=4.0))
    rewards = train_grpo(model, tok, "math", [solved], cfg, seed=0)
    assert any(0 < r < 1 for r in rewards), rewards
    after = model.state_dict()
    assert after.keys() == before.keys() and all(p.requires_grad for p in model.parameters())
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(k.endswith(".weight") and after[k].dim() == 2 for k in moved)
    assert "model.embed_tokens.weight" not in moved and "lm_head.weight" not in moved
    for k in moved:
        delta = (after[k] - before[k]).double()
        assert torch.linalg.matrix_rank(delta, rtol=1e-4).item() <= rank, k
