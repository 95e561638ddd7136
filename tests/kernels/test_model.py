"""A tiny DeepseekV32ForCausalLM gives the same logits and tokens under "dsa_sparse" as under "sdpa"."""

import pytest
import torch
import torch.nn.functional as F
from transformers import DeepseekV32Config, DeepseekV32ForCausalLM
from transformers.masking_utils import sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from kernels.attention import ATTN_IMPLEMENTATION, register

SEQ = 21  # > index_topk, so the indexer drops visible tokens
PAD = 16  # row 0 keeps 5 real tokens < index_topk: top-k (and early decode steps) must pick padding


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()).item()


def tiny_config() -> DeepseekV32Config:
    return DeepseekV32Config(
        vocab_size=100, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        index_n_heads=2, index_head_dim=16, index_topk=8,
        first_k_dense_replace=2, n_routed_experts=1, num_experts_per_tok=1, n_group=1, topk_group=1,
        max_position_embeddings=128,
    )


@pytest.fixture(scope="module")
def model() -> DeepseekV32ForCausalLM:
    register()
    torch.manual_seed(0)
    return DeepseekV32ForCausalLM(tiny_config()).eval()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two random sequences; the first is left-padded by PAD tokens."""
    torch.manual_seed(1)
    ids = torch.randint(0, 100, (2, SEQ))
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[0, :PAD] = 0
    return ids, mask


def logits_with(model: DeepseekV32ForCausalLM, impl: str, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


def test_prefill_matches_sdpa_and_is_sparse(model, batch) -> None:
    ids, _ = batch
    sparse = logits_with(model, ATTN_IMPLEMENTATION, ids, None)
    dense_sel = logits_with(model, "sdpa", ids, None)
    assert not sparse.isnan().any()
    assert rel_rms(sparse, dense_sel) < 1e-5

    # Sanity: with top-k as wide as the sequence the logits change, so the sparsity is really exercised.
    indexers = [layer.self_attn.indexer for layer in model.model.layers]
    for ix in indexers:
        ix.index_topk = SEQ
    try:
        full = logits_with(model, "sdpa", ids, None)
    finally:
        for ix in indexers:
            ix.index_topk = model.config.index_topk
    assert rel_rms(full, dense_sel) > 1e-3


def test_left_padded_batch_matches_sdpa(model, batch) -> None:
    ids, mask = batch
    sparse = logits_with(model, ATTN_IMPLEMENTATION, ids, mask)
    sdpa = logits_with(model, "sdpa", ids, mask)
    assert not sparse.isnan().any()
    assert rel_rms(sparse[0, PAD:], sdpa[0, PAD:]) < 1e-5
    assert rel_rms(sparse[1], sdpa[1]) < 1e-5
    # Padding must be invisible: other tokens under the padding leave the real positions unchanged.
    # (Comparing with the row run unpadded is not valid: relu'd indexer scores tie at 0 and top-k
    # breaks ties by position, so sdpa differs from the unpadded run too.)
    repadded = ids.clone()
    repadded[0, :PAD] = (ids[0, :PAD] + 1) % 100
    again = logits_with(model, ATTN_IMPLEMENTATION, repadded, mask)
    assert rel_rms(again[0, PAD:], sparse[0, PAD:]) < 1e-6


def test_cached_greedy_decode_matches_sdpa(model, batch) -> None:
    ids, mask = batch
    tokens = {}
    for impl in ("sdpa", ATTN_IMPLEMENTATION):
        model.set_attn_implementation(impl)
        tokens[impl] = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, min_new_tokens=10)
    assert tokens["sdpa"].shape == (2, SEQ + 10)
    assert torch.equal(tokens[ATTN_IMPLEMENTATION], tokens["sdpa"])


def test_training_gradients_match_sdpa(model, batch) -> None:
    ids, mask = batch
    grads = {}
    for impl in ("sdpa", ATTN_IMPLEMENTATION):
        model.set_attn_implementation(impl)
        model.zero_grad()
        model(ids[1:], labels=ids[1:]).loss.backward()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert grads["sdpa"].keys() == grads[ATTN_IMPLEMENTATION].keys()
    q_proj = "model.layers.0.self_attn.q_b_proj.weight"
    assert q_proj in grads["sdpa"]
    for name, want in grads["sdpa"].items():
        assert rel_rms(grads[ATTN_IMPLEMENTATION][name], want) < 1e-4, name


def test_from_pretrained_selects_implementation(model, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    loaded = DeepseekV32ForCausalLM.from_pretrained(tmp_path, attn_implementation=ATTN_IMPLEMENTATION)
    assert loaded.config._attn_implementation == ATTN_IMPLEMENTATION


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_attention_function_drops_masked_selections(mask_kind: str) -> None:
    """The registered function itself, fed selections that include padding and future tokens."""
    register()
    torch.manual_seed(2)
    b, h, s, t, topk = 2, 2, 5, 9, 7  # the queries are the last 5 of 9 keys (a chunked prefill)
    query, key, value = torch.randn(b, h, s, 24), torch.randn(b, h, t, 24), torch.randn(b, h, t, 16)
    pad_2d = torch.ones(b, t, dtype=torch.bool)
    pad_2d[1, :6] = False
    allowed = sdpa_mask(batch_size=b, q_length=s, kv_length=t, q_offset=t - s, attention_mask=pad_2d,
                        allow_is_causal_skip=False)  # [B, 1, S, T]
    mask = allowed if mask_kind == "bool" else torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo().min)
    indices = torch.rand(b, s, t).argsort(-1)[..., :topk].to(torch.int32)  # any token, visible or not
    poisoned = ~pad_2d[:, None, :, None]  # padding keys are never visible: NaN proves they are not read

    out, weights = ALL_ATTENTION_FUNCTIONS[ATTN_IMPLEMENTATION](
        None, query, key.masked_fill(poisoned, float("nan")), value.masked_fill(poisoned, float("nan")),
        mask, dropout=0.0, scaling=0.3, indices=indices,
    )

    selected = torch.zeros(b, s, t, dtype=torch.bool).scatter(-1, indices.long(), True)
    keep = (allowed[:, 0] & selected)[:, None]  # [B, 1, S, T]
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=keep, scale=0.3).transpose(1, 2)
    live = keep[:, 0].any(-1)  # [B, S]
    assert weights is None
    assert out.shape == (b, s, h, 16)
    assert not out.isnan().any()
    assert live.sum() >= 5 and (out[~live] == 0).all()
    assert rel_rms(out[live], expected[live]) < 1e-5
