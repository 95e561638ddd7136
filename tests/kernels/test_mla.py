"""The absorbed-MLA sparse path (kernels.mla) gives what transformers' own SDPA path gives with the same top-k.

transformers folds the indexer's top-k into a dense mask; ours gathers the selected latents. Both pick
the same keys only where the top-k is unique: relu'd index scores tie at exactly 0, and top-k breaks
ties by an unspecified rule. So the end-to-end tests first check that the fixed-seed inputs have no
tie at any query's k-th score (`assert_unique_topk`), and the selection itself is compared by the
scores it keeps, which is tie-proof.
"""

import copy

import pytest
import torch
from transformers import DeepseekV32Config, DeepseekV32ForCausalLM

from kernels import reference
from kernels.attention import ATTN_IMPLEMENTATION, TRITON_ENV, dense_attention
from kernels.mla import SparseMLAAttention, enable_sparse_attention, indexer_projections, indexer_topk
from experts.warmup import capture_attention_inputs, indexer_logits

SEQ = 23
PAD = 15  # row 0 keeps 8 real tokens: early queries see fewer keys than top-k
TOPK = 6


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()).item()


def tiny_config() -> DeepseekV32Config:
    return DeepseekV32Config(
        vocab_size=100, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        q_lora_rank=32, kv_lora_rank=24, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
        index_n_heads=4, index_head_dim=16, index_topk=TOPK,
        first_k_dense_replace=2, n_routed_experts=1, num_experts_per_tok=1, n_group=1, topk_group=1,
        max_position_embeddings=128,
    )


@pytest.fixture(scope="module")
def models() -> tuple[DeepseekV32ForCausalLM, DeepseekV32ForCausalLM]:
    """(stock model under sdpa, the same weights with the absorbed sparse path)."""
    torch.manual_seed(0)
    stock = DeepseekV32ForCausalLM(tiny_config()).eval()
    stock.set_attn_implementation("sdpa")
    ours = enable_sparse_attention(copy.deepcopy(stock))
    return stock, ours


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)  # a seed whose prefill and 12 greedy steps have no top-k tie (see the module doc)
    ids = torch.randint(0, 100, (2, SEQ))
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[0, :PAD] = 0
    return ids, mask


def assert_unique_topk(model: DeepseekV32ForCausalLM, ids: torch.Tensor, mask: torch.Tensor) -> None:
    """Every query's k-th best visible index score is strictly above its (k+1)-th, in every layer."""
    with capture_attention_inputs(model) as inputs, torch.no_grad():
        model(ids, attention_mask=mask)
    for layer, inp in zip(model.model.layers, inputs):
        scores = indexer_logits(layer.self_attn, inp.hidden_states, inp.position_embeddings, inp.attention_mask)
        top = scores.topk(TOPK + 1, dim=-1).values
        crowded = top[..., TOPK].isfinite()
        assert (top[..., TOPK - 1] > top[..., TOPK])[crowded].all(), "fixture has a top-k tie: pick another seed"


def test_class_swap_keeps_parameters(models) -> None:
    stock, ours = models
    assert all(isinstance(layer.self_attn, SparseMLAAttention) for layer in ours.model.layers)
    assert ours.config._attn_implementation == ATTN_IMPLEMENTATION
    theirs = stock.state_dict()
    assert ours.state_dict().keys() == theirs.keys()
    assert all(torch.equal(t, theirs[n]) for n, t in ours.state_dict().items())


def test_prefill_matches_sdpa(models, batch) -> None:
    stock, ours = models
    ids, mask = batch
    assert_unique_topk(stock, ids, mask)
    with torch.no_grad():
        want = stock(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    assert not got.isnan().any()
    assert rel_rms(got[0, PAD:], want[0, PAD:]) < 1e-5
    assert rel_rms(got[1], want[1]) < 1e-5
    with torch.no_grad(), dense_attention(stock):
        full = stock(ids, attention_mask=mask).logits
    assert rel_rms(full[1], want[1]) > 1e-3  # the top-k really drops keys


def test_dense_mode_matches_sdpa(models, batch) -> None:
    stock, ours = models
    ids, mask = batch
    with torch.no_grad(), dense_attention(stock), dense_attention(ours):
        want = stock(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    assert rel_rms(got[0, PAD:], want[0, PAD:]) < 1e-5
    assert rel_rms(got[1], want[1]) < 1e-5


def test_cached_greedy_decode_matches_sdpa(models, batch) -> None:
    stock, ours = models
    ids, mask = batch
    kwargs = dict(attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    want = stock.generate(ids, **kwargs)
    assert_unique_topk(stock, want, torch.cat([mask, torch.ones(2, 12, dtype=mask.dtype)], dim=1))
    got = ours.generate(ids, **kwargs)
    assert torch.equal(got, want)


def test_gradients_match_sdpa(models, batch) -> None:
    stock, ours = models
    ids, _ = batch
    grads = []
    for model in (stock, ours):
        model.zero_grad()
        model(ids[1:], labels=ids[1:]).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad()
    want, got = grads
    assert got.keys() == want.keys() and "model.layers.0.self_attn.kv_b_proj.weight" in got
    assert not any("indexer" in n for n in got)  # the selection is discrete: the indexer learns in warm-up only
    for name, g in want.items():
        assert rel_rms(got[name], g) < 1e-4, name


def test_save_and_reload(models, tmp_path) -> None:
    _, ours = models
    ours.save_pretrained(tmp_path)
    stock = DeepseekV32ForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 100, (1, 9))
    with torch.no_grad():
        assert torch.equal(enable_sparse_attention(stock)(ids).logits, ours(ids).logits)


@pytest.mark.parametrize(("batch_size", "seq_len", "kv_len", "topk", "chunk"), [(2, 17, 17, 5, 4), (1, 1, 40, 8, None), (3, 6, 11, 20, 1), (2, 9, 30, 7, 3)])
def test_indexer_topk_keeps_the_best_visible_scores(batch_size: int, seq_len: int, kv_len: int, topk: int, chunk: int | None) -> None:
    """Chunked, causally trimmed top-k == top-k of the full score matrix (compared by the scores kept)."""
    gen = torch.Generator().manual_seed(seq_len * 100 + kv_len)
    iq = torch.randn(batch_size, seq_len, 3, 16, generator=gen)
    ik = torch.randn(batch_size, kv_len, 16, generator=gen)
    w = torch.randn(batch_size, seq_len, 3, generator=gen)
    allowed = torch.ones(batch_size, seq_len, kv_len, dtype=torch.bool)
    allowed[0, :, : kv_len // 3] = False  # left padding in row 0
    allowed &= torch.arange(kv_len) <= (torch.arange(seq_len) + kv_len - seq_len)[:, None]

    got = indexer_topk(iq, ik, w, scale=0.25, topk=topk, allowed=allowed, chunk_size=chunk)

    full = reference.indexer_scores(iq, ik, w, scale=0.25).masked_fill(~allowed, float("-inf"))
    assert got.shape == (batch_size, seq_len, min(topk, kv_len)) and got.dtype == torch.int32
    assert torch.equal(reference.selected_scores(got, full), full.topk(min(topk, kv_len), dim=-1).values)
    picked = got[got >= 0].long()
    assert picked.numel() > 0 and (picked < kv_len).all()


def test_indexer_projections_mirror_transformers(models, batch) -> None:
    """The same keys transformers' indexer caches, and scores whose top-k is its selection."""
    stock, _ = models
    ids, mask = batch
    attn = stock.model.layers[0].self_attn
    with capture_attention_inputs(stock) as inputs, torch.no_grad():
        stock(ids, attention_mask=mask)
    inp = inputs[0]
    q_resid = attn.q_a_layernorm(attn.q_a_proj(inp.hidden_states))
    iq, ik, w = indexer_projections(attn, inp.hidden_states, q_resid, inp.position_embeddings)
    with torch.no_grad():
        theirs = attn.indexer(inp.hidden_states, q_resid, inp.position_embeddings, inp.attention_mask[:, 0], None)
    ours = indexer_topk(iq, ik, w, attn.indexer.softmax_scale, TOPK, inp.attention_mask[:, 0])
    visible = inp.attention_mask[:, 0].sum(-1) >= TOPK  # rows where every transformers slot is a real key
    assert torch.equal(ours[visible].sort(-1).values, theirs[visible].sort(-1).values)


def test_triton_path_matches_reference_path(models, batch, monkeypatch) -> None:
    """With DISTILLERY_DSA_TRITON=1 the layer runs the fused Triton indexer top-k and sparse attention kernels."""
    _, ours = models
    ids, mask = batch
    with torch.no_grad():
        want = ours(ids, attention_mask=mask).logits
        monkeypatch.setenv(TRITON_ENV, "1")
        got = ours(ids, attention_mask=mask).logits
    assert rel_rms(got[0, PAD:], want[0, PAD:]) < 1e-5
    assert rel_rms(got[1], want[1]) < 1e-5
