"""GRPO pieces against their plain formulas, and one real step on a tiny model."""

import copy
import json
import math
import random

import pytest
import torch

from domains import get_domain
from experts.heldout import EvalConfig, pass_at_1
from experts.lora import LoraSettings
from experts.model import ModelConfig, build_model
from experts.rl import PromptRounds, RLConfig, group_advantages, grpo_loss, sampler_logprobs, train_grpo, unbiased_kl
from experts.sft import TrainConfig, train_sft
from experts.tokenizer import train_tokenizer
from generation.engine.sampler import sample
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
            total += pg + beta * r * (math.exp(d) - d - 1)  # the k3 estimate weighted by π_θ / π_old
            count += 1
    assert grpo_loss(logp, old, ref, adv, mask, eps, beta).item() == pytest.approx(float(total) / count, rel=1e-5)


def test_prompt_rounds_use_every_prompt_once_before_repeating():
    rounds = PromptRounds(10, 4, random.Random(3))
    drawn = [i for _ in range(5) for i in next(rounds)]
    assert sorted(drawn[:10]) == list(range(10))
    assert sorted(drawn[10:20]) == list(range(10))
    # A round never asks for more prompts than there are.
    assert sorted(next(PromptRounds(3, 8, random.Random(0)))) == [0, 1, 2]


def test_grpo_without_reward_signal_changes_nothing():
    domain = get_domain("math")
    tasks = domain.make_tasks(8, seed=0)
    tok = train_tokenizer([t["prompt"] + t["completion"] for t in tasks] * 4, 300)
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = RLConfig(steps=2, prompts_per_step=2, group_size=4, sampling=SamplingConfig(temperature=1.0, max_new_tokens=8))
    rewards = train_grpo(model, tok, tasks, cfg, seed=0)["reward"]
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
    rewards = train_grpo(model, tok, [solved], cfg, seed=0)["reward"]
    assert any(0 < r < 1 for r in rewards), rewards
    after = model.state_dict()
    assert after.keys() == before.keys() and all(p.requires_grad for p in model.parameters())
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(k.endswith(".weight") and after[k].dim() == 2 for k in moved)
    assert "model.embed_tokens.weight" not in moved and "lm_head.weight" not in moved
    for k in moved:
        delta = (after[k] - before[k]).double()
        assert torch.linalg.matrix_rank(delta, rtol=1e-4).item() <= rank, k


def test_the_importance_corrected_kl_is_unbiased_from_another_policys_samples():
    """Tokens drawn from π_old, the KL wanted is KL(π_θ || π_ref): the corrected estimator's mean and
    its gradient match the exact ones within 4 standard errors (400,000 draws, 6 tokens); plain k3
    on the same draws misses by far more."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(6, generator=g, requires_grad=True)
    old, ref = torch.log_softmax(torch.randn(6, generator=g), -1), torch.log_softmax(torch.randn(6, generator=g) * 1.5, -1)
    logp = torch.log_softmax(theta, -1)
    exact = (logp.exp() * (logp - ref)).sum()
    x = torch.multinomial(old.exp(), 400_000, replacement=True, generator=g)
    per_sample = unbiased_kl(logp[x], old[x], ref[x])
    se = per_sample.std().item() / math.sqrt(len(x))
    assert abs(per_sample.mean().item() - exact.item()) < 4 * se, (per_sample.mean().item(), exact.item(), se)
    delta = ref[x] - logp[x].detach()
    plain = (torch.exp(delta) - delta - 1).mean().item()
    assert abs(plain - exact.item()) > 20 * se  # without the weight, the estimate belongs to π_old's samples
    (grad_estimate,) = torch.autograd.grad(per_sample.mean(), theta, retain_graph=True)
    (grad_exact,) = torch.autograd.grad(exact, theta)
    assert torch.allclose(grad_estimate, grad_exact, atol=0.02), (grad_estimate, grad_exact)


def test_offpolicy_masking_drops_the_gradient_of_drifted_negative_sequences():
    logp = torch.full((3, 4), -1.0, requires_grad=True)
    old = torch.tensor([[-0.2] * 4, [-0.9] * 4, [-0.2] * 4])  # rows 0 and 2 drifted by 0.8 a token, row 1 by 0.1
    ref = torch.full((3, 4), -1.2)
    adv = torch.tensor([-1.0, -1.0, 1.0])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    grpo_loss(logp, old, ref, adv, mask, 0.2, 0.1, offpolicy_delta=0.5).backward()
    grad = logp.grad.abs()
    assert torch.all(grad[0] == 0)  # negative and drifted: no gradient at all, KL term included
    assert torch.all(grad[1][mask[1] == 1] > 0) and torch.all(grad[2] > 0)  # close to its sampler, or positive
    logp.grad = None
    grpo_loss(logp, old, ref, adv, mask, 0.2, 0.1).backward()
    assert torch.all(logp.grad[0][mask[0] == 1] != 0)  # unset: every sequence trains


def test_training_reads_the_distribution_the_sampler_drew_from():
    """The sampler's truncated distribution (temperature 0.7, top-k 6, top-p 0.9) drawn 40,000 times at
    one position of a tiny model; `sampler_logprobs` gives each token's probability within 0.01 (4
    standard errors), tokens outside the set never drawn and given no mass; the untruncated
    distribution misses by more."""
    domain = get_domain("math")
    tasks = domain.make_tasks(8, seed=0)
    tok = train_tokenizer([t["prompt"] + t["completion"] for t in tasks] * 4, 300)
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, seed=0).eval()
    with torch.no_grad():
        for p in model.parameters():  # a peaked next-token distribution, so that top-p truncates too
            p.mul_(3.0)
    prefix = tok(tasks[0]["prompt"])["input_ids"]
    vocab = len(tok)
    ids = torch.tensor([prefix + [v] for v in range(vocab)])
    attn = torch.ones_like(ids)
    sampling = SamplingConfig(temperature=0.7, top_k=6, top_p=0.9)
    with torch.no_grad():
        logits = model(input_ids=ids[:1, :-1]).logits[0, -1]
        top = int(logits.argmax())  # a token the sampler can draw: its row gives the sampler's set at the prefix
        _, keep = sampler_logprobs(model, ids[top : top + 1], attn[top : top + 1], sampling)
        logp, _ = sampler_logprobs(model, ids, attn, sampling, keep.expand(vocab, -1, -1))
    probs = logp[:, -1].exp()  # row v: the probability of token v after the prefix
    generator = torch.Generator().manual_seed(0)
    draws = sample(logits.expand(40_000, vocab), [generator] * 40_000, 0.7, 0.9, 6)
    freq = torch.bincount(draws, minlength=vocab).float() / len(draws)
    assert 1 < int((probs > 0).sum()) <= 6 and torch.all(freq[probs == 0] == 0)
    assert (freq - probs).abs().max().item() < 0.01
    plain = torch.softmax(logits.float(), -1)
    assert (freq - plain).abs().max().item() > 0.05
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_a_mixture_is_judged_by_each_tasks_own_verifier():
    """Mixed RL's rounds hold tasks of several domains: a memorised math task and a memorised code task
    both earn their reward, each from its own verifier (the other's would reject it), curve by curve."""
    math_task = next(t for t in get_domain("math").make_tasks(20, seed=1) if "Answer" in t["completion"])
    code_task = get_domain("code").make_tasks(1, seed=1)[0]
    tok = train_tokenizer([t["prompt"] + t["completion"] for t in (math_task, code_task)] * 4, 300)
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, seed=0)
    train_sft(model, tok, [math_task, code_task], TrainConfig(steps=300, batch_size=2, lr=3e-3, warmup_steps=0), seed=0)
    assert not get_domain("math").verify(math_task, code_task["completion"]).ok and not get_domain("code").verify(code_task, math_task["completion"]).ok
    cfg = RLConfig(steps=1, prompts_per_step=2, group_size=4, sampling=SamplingConfig(temperature=0.2, max_new_tokens=64))
    curves = train_grpo(model, tok, [math_task, code_task], cfg, seed=0)
    assert set(curves) == {"reward", "reward_code", "reward_math"}
    assert curves["reward_math"][0] > 0.5 and curves["reward_code"][0] > 0.5, curves


def test_checkpointing_and_bf16_make_the_same_round():
    """One GRPO round from one SFT model three ways: gradient checkpointing makes the same weights;
    bf16 autocast draws the same samples (the sampler runs in fp32) and moves the weights the same way
    to bfloat16's precision (Adam's first step is about lr times the sign of each gradient entry)."""
    domain = get_domain("math")
    solved = next(t for t in domain.make_tasks(20, seed=1) if "Answer" in t["completion"])
    tok = train_tokenizer([solved["prompt"] + solved["completion"]] * 4, 300)
    sft = build_model(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok, seed=0)
    train_sft(sft, tok, [solved], TrainConfig(steps=200, batch_size=1, lr=3e-3, warmup_steps=0), seed=0)
    start = torch.cat([p.detach().flatten() for p in sft.parameters()])

    def one_round(**settings) -> tuple[list[float], torch.Tensor]:
        model = copy.deepcopy(sft)
        cfg = RLConfig(steps=1, prompts_per_step=1, group_size=8, minibatch_size=4, lr=1e-3, warmup_updates=0,
                       sampling=SamplingConfig(temperature=1.3, max_new_tokens=24), **settings)
        rewards = train_grpo(model, tok, [solved], cfg, seed=0)["reward"]
        return rewards, torch.cat([p.detach().flatten() for p in model.parameters()]) - start

    rewards, moved = one_round()
    assert 0 < rewards[0] < 1 and moved.abs().max() > 0, rewards  # the group has an advantage: the weights move
    rewards_ckpt, moved_ckpt = one_round(gradient_checkpointing=True)
    assert rewards_ckpt == rewards and torch.allclose(moved_ckpt, moved, atol=1e-7)
    rewards_bf16, moved_bf16 = one_round(precision="bf16")
    cosine = torch.nn.functional.cosine_similarity(moved_bf16, moved, dim=0).item()
    print(f"bf16 round vs fp32: cosine of the weight updates {cosine:.3f}")
    assert rewards_bf16 == rewards and cosine > 0.8, cosine
