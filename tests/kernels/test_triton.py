"""Triton DSA kernels against kernels.reference, run on CPU by the Triton interpreter.

conftest.py sets TRITON_INTERPRET=1, which works only if triton was not imported before it. Shapes
stay tiny because the interpreter is slow.
"""

import pytest
import torch
import triton
import triton.language as tl
from transformers import DeepseekV32Config, DeepseekV32ForCausalLM

from kernels import reference, triton_dsa
from kernels.attention import ATTN_IMPLEMENTATION, TRITON_ENV, register


@triton.jit
def _probe_kernel(x_ptr):
    tl.store(x_ptr + tl.arange(0, 2), tl.zeros([2], tl.float32))


def _interpreter_runs() -> bool:
    try:
        _probe_kernel[(1,)](torch.ones(2))
    except Exception:  # noqa: BLE001 - any failure means the interpreter is unusable here
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _interpreter_runs(),
    reason="Triton interpreter unusable: triton was imported before TRITON_INTERPRET=1 was set "
    "(tests/kernels/conftest.py sets it; run `pytest tests/kernels` or export TRITON_INTERPRET=1)",
)


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()).item()


# (batch, S, T, heads, kv_heads (0 = shared latent), d_qk, d_v, topk, left pads, query end position or None)
CASES = {
    "expanded_odd_7": (1, 7, 7, 2, 2, 24, 16, 4, (), None),
    "gqa_odd_13": (2, 13, 13, 6, 2, 24, 16, 5, (0, 4), None),  # 3 heads per kv head: a partial head block
    "topk_exceeds_context": (2, 7, 7, 2, 2, 24, 16, 20, (3, 0), None),
    "ragged_batch": (3, 9, 9, 2, 2, 24, 16, 6, (0, 2, 8), None),
    "absorbed_mla_tl_dot": (2, 5, 5, 16, 0, 40, 32, 16, (1, 0), None),
    "decode_static_cache": (2, 1, 70, 2, 2, 24, 16, 16, (0, 9), 50),
    "decode_absorbed_mla": (1, 1, 70, 16, 0, 40, 32, 24, (), None),
}


def make_case(name: str, seed: int) -> dict:
    """Inputs with NaN at every key no query may see, and indices already masked to -1."""
    b, s, t, h, hk, d_qk, d_v, topk, pads, end = CASES[name]
    gen = torch.Generator().manual_seed(seed)
    end = t - 1 if end is None else end
    positions = (torch.arange(s) + end - s + 1).expand(b, s)
    key_ok = torch.ones(b, t, dtype=torch.bool)
    for row, pad in enumerate(pads):
        key_ok[row, :pad] = False
    allowed = key_ok[:, None, :] & (torch.arange(t) <= positions[:, :, None])
    never = ~allowed.any(1)  # [B, T]

    # q in the strided [B, S, H, D] view of a [B, H, S, D] tensor, as transformers hands it over.
    q = torch.randn(b, h, s, d_qk, generator=gen).transpose(1, 2)
    if hk == 0:
        k = torch.randn(b, t, d_qk, generator=gen).masked_fill(never[..., None], float("nan"))
        v = k[..., :d_v]  # strided view into the latent
    else:
        k = torch.randn(b, t, hk, d_qk, generator=gen).masked_fill(never[..., None, None], float("nan"))
        v = torch.randn(b, t, hk, d_v, generator=gen).masked_fill(never[..., None, None], float("nan"))
    scores = torch.rand(b, s, t, generator=gen).masked_fill(~allowed, float("-inf"))
    raw = scores.topk(min(topk, t), dim=-1).indices.to(torch.int32)
    indices = reference.mask_indices(raw, t, positions, allowed)
    return {"q": q, "k": k, "v": v, "indices": indices, "scale": d_qk**-0.5, "never": never}


@pytest.mark.parametrize("name", CASES)
def test_forward_matches_reference(name: str) -> None:
    x = make_case(name, seed=0)
    out = triton_dsa.sparse_attention(x["q"], x["k"], x["v"], x["indices"], x["scale"])
    expected = reference.sparse_attention(x["q"], x["k"], x["v"], x["indices"], x["scale"])
    live = (x["indices"] >= 0).any(-1)
    assert not out.isnan().any()
    assert live.any() and (out[~live] == 0).all()
    assert expected[live].abs().min() > 0
    assert rel_rms(out[live], expected[live]) < 1e-5


# The interpreter's bf16 tl.dot returns garbage (fp16 and fp32 are exact), so bf16 is only checked on
# the broadcast path; tl.dot's low-precision path is checked in fp16.
@pytest.mark.parametrize("name,dtype", [("gqa_odd_13", torch.bfloat16), ("absorbed_mla_tl_dot", torch.float16)])
def test_forward_low_precision(name: str, dtype: torch.dtype) -> None:
    x = make_case(name, seed=4)
    q, k = x["q"].to(dtype), x["k"].to(dtype)
    v = k[..., : x["v"].shape[-1]] if k.dim() == 3 else x["v"].to(dtype)
    out = triton_dsa.sparse_attention(q, k, v, x["indices"], x["scale"])
    expected = reference.sparse_attention(q, k, v, x["indices"], x["scale"])
    live = (x["indices"] >= 0).any(-1)
    assert out.dtype == dtype and not out.isnan().any()
    assert rel_rms(out[live].float(), expected[live].float()) < 1e-2


@pytest.mark.parametrize("name", ["gqa_odd_13", "ragged_batch", "absorbed_mla_tl_dot", "decode_static_cache"])
def test_backward_matches_reference_autograd(name: str) -> None:
    x = make_case(name, seed=1)
    shared = x["k"].dim() == 3
    q, k = x["q"].detach().requires_grad_(), x["k"].detach().requires_grad_()
    v = k[..., : x["v"].shape[-1]] if shared else x["v"].detach().requires_grad_()
    leaves = [q, k] if shared else [q, k, v]
    grad_out = torch.randn(*q.shape[:3], v.shape[-1], generator=torch.Generator().manual_seed(2))

    got = torch.autograd.grad(triton_dsa.sparse_attention(q, k, v, x["indices"], x["scale"]), leaves, grad_out)
    want = torch.autograd.grad(reference.sparse_attention(q, k, v, x["indices"], x["scale"]), leaves, grad_out)
    for g, w in zip(got, want):
        assert not g.isnan().any()
        assert g.abs().max() > 0
        assert rel_rms(g, w) < 1e-5
    # Tokens no query may see get exactly zero key/value gradient.
    assert (got[1][x["never"]] == 0).all()


@pytest.mark.parametrize(
    "seq,kv,causal,pads",
    # 37 > BLOCK_S; kv 65 puts a query exactly on the first key of the second 64-wide tile.
    [(37, 37, True, (0, 5)), (3, 65, True, (0, 0)), (1, 70, True, (9, 0)), (5, 70, False, (0, 0))],
)
def test_indexer_scores_match_reference(seq: int, kv: int, causal: bool, pads: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(3)
    q_idx, k_idx = torch.randn(2, seq, 3, 16, generator=gen), torch.randn(2, kv, 16, generator=gen)
    weights = torch.randn(2, seq, 3, generator=gen)
    key_ok = torch.ones(2, kv, dtype=torch.bool)
    for row, pad in enumerate(pads):
        key_ok[row, :pad] = False
    kwargs = {"scale": 0.25, "causal": causal, "key_padding_mask": key_ok}

    got = triton_dsa.indexer_scores(q_idx, k_idx, weights, None, **kwargs)
    want = reference.indexer_scores(q_idx, k_idx, weights, None, **kwargs)
    assert torch.equal(got.isinf(), want.isinf())
    finite = want.isfinite()
    assert finite.any() and (want[finite] != 0).any()
    assert rel_rms(got[finite], want[finite]) < 1e-5


def test_model_through_triton_matches_sdpa(monkeypatch) -> None:
    register()
    torch.manual_seed(0)
    config = DeepseekV32Config(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
        v_head_dim=16, index_n_heads=2, index_head_dim=16, index_topk=8, first_k_dense_replace=2,
        n_routed_experts=1, num_experts_per_tok=1, n_group=1, topk_group=1,
    )
    model = DeepseekV32ForCausalLM(config).eval()
    ids = torch.randint(0, 100, (2, 13))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[0, :4] = 0
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        want = model(ids, attention_mask=mask).logits
        monkeypatch.setenv(TRITON_ENV, "1")
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
        got = model(ids, attention_mask=mask).logits
    assert not got.isnan().any()
    assert rel_rms(got[0, 4:], want[0, 4:]) < 1e-5
    assert rel_rms(got[1], want[1]) < 1e-5


@pytest.mark.parametrize(
    ("batch", "seq", "kv", "topk", "pads"),
    [(1, 37, 37, 8, (0, 0)), (2, 1, 53, 16, (0, 9)), (2, 19, 19, 40, (5, 0)), (3, 5, 70, 13, (0, 30)), (1, 33, 33, 32, (0, 0)),
     # k beyond the fused kernel's cap: scores, then torch.topk
     (2, 3, 600, 300, (0, 100))],
)
def test_indexer_topk_matches_reference(batch: int, seq: int, kv: int, topk: int, pads: tuple[int, int]) -> None:
    """Fused scores + top-k keep the same scores as reference top-k (tie-proof), -1 exactly where keys run out."""
    gen = torch.Generator().manual_seed(seq * 1000 + kv + topk)
    q = torch.randn(batch, seq, 3, 24, generator=gen)
    k = torch.randn(batch, kv, 24, generator=gen)
    w = torch.randn(batch, seq, 3, generator=gen)
    kpm = torch.ones(batch, kv, dtype=torch.bool)
    for row, pad in enumerate(pads[:batch]):
        kpm[row, :pad] = False  # left padding

    got = triton_dsa.indexer_topk(q, k, w, topk, scale=0.3, key_padding_mask=kpm)

    scores = reference.indexer_scores(q, k, w, scale=0.3, key_padding_mask=kpm)
    want = reference.topk_indices(scores, topk)
    assert got.shape == want.shape == (batch, seq, topk) and got.dtype == torch.int32
    assert torch.equal((got < 0).sum(-1), (want < 0).sum(-1))  # the same number of empty slots per query
    assert torch.equal(reference.selected_scores(got, scores), reference.selected_scores(want, scores))
