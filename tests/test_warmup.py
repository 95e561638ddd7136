"""Dense indexer warm-up (experts.warmup) on a tiny random DeepseekV32ForCausalLM.

The model's attention weights are scaled up (x20) after init: with the default 0.02-std init the
attention of a random model is almost uniform, and then no top-k selection can beat recall k/n, so
there would be nothing for the indexer to learn.
"""

from __future__ import annotations

import random

import pytest
import torch

from experts.model import ModelConfig, build_model
from experts.sft import collate, encode
from experts.tokenizer import train_tokenizer
from experts import warmup as W

TOPK = 8
SHARPEN = 20.0
WORDS = "alpha beta gamma delta red blue green one two three cat dog sun moon".split()


pytestmark = pytest.mark.usefixtures("one_thread")


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    return train_tokenizer([sentence(rng, 12) for _ in range(20)], 100)


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    """~35-45 tokens each (> TOPK), of varying length so that batches carry padding."""
    rng = random.Random(1)
    return [{"prompt": sentence(rng, rng.randint(3, 5)), "completion": sentence(rng, rng.randint(4, 6))} for _ in range(96)]


def make_model(tokenizer):
    cfg = ModelConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
        q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        index_n_heads=2, index_head_dim=16, index_topk=TOPK, max_position_embeddings=128,
    )  # build_model sets first_k_dense_replace=num_layers, n_routed_experts=1, n_group=topk_group=1
    model = build_model(cfg, tokenizer, seed=0).eval()
    with torch.no_grad():
        for attn in W.attention_modules(model):
            for lin in (attn.q_b_proj, attn.kv_a_proj_with_mqa, attn.kv_b_proj):
                lin.weight.mul_(SHARPEN)
    return model


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer)


def batch_of(tokenizer, examples) -> dict[str, torch.Tensor]:
    return collate([encode(tokenizer, e["prompt"], e["completion"], True, 64) for e in examples], tokenizer.pad_token_id)


def test_sequences_are_longer_than_topk(tokenizer, examples) -> None:
    lengths = [len(encode(tokenizer, e["prompt"], e["completion"], True, 64)[0]) for e in examples]
    assert min(lengths) > 3 * TOPK and max(lengths) < 64 and len(set(lengths)) > 1


@pytest.mark.parametrize("impl", ["sdpa", "eager"])  # boolean mask / additive float mask
def test_indexer_logits_match_transformers_selection(model, tokenizer, examples, impl) -> None:
    batch = batch_of(tokenizer, examples[:4])
    assert (batch["attention_mask"] == 0).any()  # padded rows
    attns = W.attention_modules(model)
    selections = []
    handles = [a.indexer.register_forward_hook(lambda m, a_, out: selections.append(out)) for a in attns]
    model.set_attn_implementation(impl)
    try:
        with torch.no_grad(), W.capture_attention_inputs(model) as captured:
            model(**{k: batch[k] for k in ("input_ids", "attention_mask")})  # sparse, index_topk = 8
    finally:
        model.set_attn_implementation("sdpa")
        for h in handles:
            h.remove()
    assert len(selections) == len(captured) == 2

    real = batch["attention_mask"].bool()
    compared = 0
    for attn, inp, sel in zip(attns, captured, selections):
        assert sel.shape[-1] == TOPK
        logits = W.indexer_logits(attn, inp.hidden_states, inp.position_embeddings, inp.attention_mask)
        allowed = W.allowed_mask(inp.attention_mask)
        assert logits.shape == allowed.shape and torch.isneginf(logits[~allowed]).all() and torch.isfinite(logits[allowed]).all()
        mine = logits.topk(TOPK, dim=-1)
        for b, s in real.nonzero().tolist():
            theirs = {t for t in sel[b, s].tolist() if allowed[b, s, t]}
            ours = {t for t, v in zip(mine.indices[b, s].tolist(), mine.values[b, s].tolist()) if v != float("-inf")}
            assert ours == theirs, (b, s)
            compared += 1

        # Gradients reach every indexer weight (and nothing is computed under no_grad).
        ix = attn.indexer
        params = [ix.wq_b.weight, ix.wk.weight, ix.k_norm.weight, ix.k_norm.bias, ix.weights_proj.weight]
        grads = torch.autograd.grad(logits[allowed].square().sum(), params)
        assert all(g.abs().sum() > 0 for g in grads)
    assert compared == 2 * int(real.sum())


def test_attention_target_is_dense_eager_attention(model, tokenizer, examples) -> None:
    batch = {k: v for k, v in batch_of(tokenizer, examples[4:7]).items() if k != "labels"}
    real = batch["attention_mask"].bool()
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            with W.dense_attention(model), W.capture_attention_inputs(model) as captured:
                dense = model(**batch, output_attentions=True).attentions
            sparse = model(**batch, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    for attn, inp, eager_probs, sparse_probs in zip(W.attention_modules(model), captured, dense, sparse):
        target = W.attention_target(attn, inp.hidden_states, inp.position_embeddings, inp.attention_mask)
        expected = eager_probs.sum(1) / eager_probs.sum((1, 3))[..., None]
        torch.testing.assert_close(target[real], expected[real], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(target[real].sum(-1), torch.ones(int(real.sum())))
        assert (target[~W.allowed_mask(inp.attention_mask)] == 0).all()
        # The attention is peaked (so top-k matters) and the sparse forward really differs.
        assert target[real].max(-1).values.mean() > 0.3
        assert ((sparse_probs[:, 0] > 0).sum(-1) <= TOPK).all() and ((eager_probs[:, 0] > 0).sum(-1) > TOPK).any()
    assert all(a.indexer.index_topk == TOPK for a in W.attention_modules(model))


def test_kl_is_nonnegative_and_zero_at_target() -> None:
    torch.manual_seed(0)
    B, S = 3, 12
    allowed = torch.ones(S, S, dtype=torch.bool).tril().expand(B, S, S).clone()
    allowed[0, :, :4] = False  # left padding of row 0 ...
    valid = torch.ones(B, S, dtype=torch.bool)
    valid[0, :4] = False  # ... whose first queries see nothing: their logits rows are all -inf
    target = torch.softmax((3 * torch.randn(B, S, S)).masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)

    for seed in range(5):
        torch.manual_seed(seed)
        logits = (torch.randn(B, S, S) * 4).masked_fill(~allowed, float("-inf")).requires_grad_()
        loss = W.indexer_kl(logits, target, valid)
        assert loss.item() >= 0
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all() and (grad[~allowed] == 0).all()

    # softmax(log target + c) == target: zero, up to rounding.
    at_target = (target.log() + 1.5).masked_fill(~allowed, float("-inf"))
    assert abs(W.indexer_kl(at_target, target, valid).item()) < 1e-6

    # Matches torch's KL on the valid rows.
    logits = torch.randn(B, S, S).masked_fill(~allowed, float("-inf"))
    logp = torch.log_softmax(logits[valid], -1)
    t = target[valid]
    expected = torch.where(t > 0, t * (t.clamp_min(1e-30).log() - logp), 0.0).sum(-1).mean()
    torch.testing.assert_close(W.indexer_kl(logits, target, valid), expected)


def test_dense_attention_restores_topk_on_error(model) -> None:
    with pytest.raises(RuntimeError), W.dense_attention(model):
        assert all(a.indexer.index_topk >= 1 << 40 for a in W.attention_modules(model))
        raise RuntimeError("boom")
    assert all(a.indexer.index_topk == TOPK for a in W.attention_modules(model))


def test_warmup_trains_only_the_indexer_and_raises_recall(tokenizer, examples) -> None:
    model = make_model(tokenizer)
    train, held_out = examples[:80], examples[80:]
    held_batches = [batch_of(tokenizer, held_out[i : i + 8]) for i in range(0, len(held_out), 8)]
    before = W.evaluate_indexer(model, held_batches)
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    indexer_names = {n for n, _ in W.indexer_parameters(model)}
    assert len(indexer_names) == 2 * 5  # wq_b, wk, k_norm.{weight,bias}, weights_proj per layer

    cfg = W.WarmupConfig(steps=30, batch_size=8, lr=1e-2, max_len=64, eval_examples=16)
    calls = []
    metrics = W.warmup_indexer(model, tokenizer, train, cfg, seed=0, progress=lambda *a: calls.append(a))
    after = W.evaluate_indexer(model, held_batches)

    assert len(metrics["losses"]) == 30 and len(calls) == 30 and calls[-1][:2] == (30, 30)
    assert all(x == x and x >= 0 for x in metrics["losses"])
    assert metrics["eval_examples"] == 16 and metrics["train_examples"] == 64
    assert metrics["recall_after"] > metrics["recall_before"] + 0.2
    assert metrics["kl_after"] < 0.7 * metrics["kl_before"]
    # On sequences warm-up never saw at all.
    assert after["recall"] > before["recall"] + 0.2 and after["kl"] < 0.7 * before["kl"]
    assert W.indexer_recall(model, held_batches) == pytest.approx(after["recall"])

    for n, p in model.named_parameters():
        if n in indexer_names:
            assert not torch.equal(p, snapshot[n]), n
        else:
            assert torch.equal(p, snapshot[n]), n
        assert p.requires_grad  # flags restored
    assert all(a.indexer.index_topk == TOPK for a in W.attention_modules(model))
    assert not model.training

    print(
        f"\nrecall {metrics['recall_before']:.3f} -> {metrics['recall_after']:.3f}, "
        f"KL {metrics['kl_before']:.4f} -> {metrics['kl_after']:.4f} (warm-up held-out); "
        f"recall {before['recall']:.3f} -> {after['recall']:.3f}, KL {before['kl']:.4f} -> {after['kl']:.4f} (separate held-out)"
    )


def test_warmup_config_forbids_extra_fields() -> None:
    with pytest.raises(ValueError):
        W.WarmupConfig(steps=1, warmup_steps=3)
    assert all(f.description for f in W.WarmupConfig.model_fields.values())
