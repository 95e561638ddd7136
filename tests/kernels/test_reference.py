"""kernels.reference against naive dense computations that build the full L x T masks."""

from dataclasses import dataclass

import pytest
import torch

from kernels import reference

INDEX_HEADS, INDEX_DIM = 3, 16


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()).item()


@dataclass(frozen=True)
class Case:
    batch: int
    seq: int  # S, queries
    kv: int  # T, keys; the queries are the last S positions unless `end` says otherwise
    heads: int
    kv_heads: int  # 0 = one latent shared by all heads (absorbed MLA: k [B,T,D], v = k[..., :Dv])
    d_qk: int
    d_v: int
    topk: int
    pads: tuple[int, ...] = ()  # left padding per batch row
    end: int | None = None  # decode into a preallocated cache: the query sits at `end`, later slots are unwritten
    chunk: int | None = None


CASES = {
    "prefill_odd_7": Case(1, 7, 7, 2, 2, 24, 16, 4),
    "prefill_33_gqa_chunked": Case(2, 33, 33, 4, 2, 24, 16, 8, chunk=5),
    "topk_exceeds_context": Case(2, 7, 7, 2, 2, 24, 16, 16),
    "ragged_left_padding": Case(3, 12, 12, 2, 2, 24, 16, 5, pads=(0, 3, 11)),
    "absorbed_mla": Case(2, 9, 9, 4, 0, 40, 32, 6, pads=(2, 0)),
    "decode_long_cache": Case(2, 1, 300, 2, 2, 24, 16, 16, pads=(0, 37)),
    "decode_static_cache": Case(2, 1, 300, 4, 0, 40, 32, 16, pads=(5, 0), end=200),
}


def make_inputs(case: Case, requires_grad: bool = False) -> dict:
    """Random inputs plus the transformers-style raw top-k (which may pick masked tokens)."""
    b, s, t = case.batch, case.seq, case.kv
    heads_shape = () if case.kv_heads == 0 else (case.kv_heads,)
    q = torch.randn(b, s, case.heads, case.d_qk)
    k = torch.randn(b, t, *heads_shape, case.d_qk)
    v = k[..., : case.d_v] if case.kv_heads == 0 else torch.randn(b, t, case.kv_heads, case.d_v)
    end = t - 1 if case.end is None else case.end
    positions = (torch.arange(s) + end - s + 1).expand(b, s)
    key_ok = torch.ones(b, t, dtype=torch.bool)
    for row, pad in enumerate(case.pads):
        key_ok[row, :pad] = False
    allowed = key_ok[:, None, :] & (torch.arange(t) <= positions[:, :, None])  # [B, S, T]
    scores = reference.indexer_scores(
        torch.randn(b, s, INDEX_HEADS, INDEX_DIM), torch.randn(b, t, INDEX_DIM), torch.randn(b, s, INDEX_HEADS),
        positions, key_padding_mask=key_ok,
    )
    raw = scores.topk(min(case.topk, t), dim=-1).indices.to(torch.int32)  # as DeepseekV32Indexer returns
    return {"q": q, "k": k, "v": v, "positions": positions, "allowed": allowed, "raw": raw}


def dense_attention(q, k, v, raw, allowed, scale) -> torch.Tensor:
    """Naive: full [B, H, S, T] scores, masked to (selected & allowed); empty rows give 0."""
    k = k.unsqueeze(2) if k.dim() == 3 else k
    v = v.unsqueeze(2) if v.dim() == 3 else v
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    selected = torch.zeros_like(allowed).scatter(-1, raw.long(), True) & allowed  # [B, S, T]
    scores = torch.einsum("bshd,bthd->bhst", q, k) * scale
    scores = scores.masked_fill(~selected[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhst,bthd->bshd", probs, v)


def poison(x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Copy of k/v [B, T, ...] with NaN at every key no query may attend to."""
    never = ~allowed.any(dim=1)  # [B, T]
    return x.clone().masked_fill(never.view(*never.shape, *[1] * (x.dim() - 2)), float("nan"))


@pytest.mark.parametrize("name", CASES)
def test_sparse_attention_matches_dense(name: str) -> None:
    torch.manual_seed(0)
    case = CASES[name]
    x = make_inputs(case)
    scale = case.d_qk**-0.5
    indices = reference.mask_indices(x["raw"], case.kv, x["positions"], x["allowed"])
    if case.kv_heads == 0:
        k_p = poison(x["k"], x["allowed"])
        v_p = k_p[..., : case.d_v]
    else:
        k_p, v_p = poison(x["k"], x["allowed"]), poison(x["v"], x["allowed"])
    out = reference.sparse_attention(x["q"], k_p, v_p, indices, scale, chunk_size=case.chunk)
    expected = dense_attention(x["q"], x["k"], x["v"], x["raw"], x["allowed"], scale)

    assert out.shape == (case.batch, case.seq, case.heads, case.d_v)
    assert not out.isnan().any()
    live = (indices >= 0).any(-1)  # [B, S] queries with at least one visible selection
    assert live.any()
    assert (out[~live] == 0).all()
    assert expected[live].abs().min() > 0  # never compare on zeros
    assert rel_rms(out[live], expected[live]) < 1e-5


@pytest.mark.parametrize("name", ["ragged_left_padding", "absorbed_mla"])
def test_sparse_attention_gradients_match_dense(name: str) -> None:
    torch.manual_seed(1)
    case = CASES[name]
    x = make_inputs(case)
    indices = reference.mask_indices(x["raw"], case.kv, x["positions"], x["allowed"])
    grad_out = torch.randn(case.batch, case.seq, case.heads, case.d_v)

    def leaves(k: torch.Tensor, v: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        q, k = x["q"].clone().requires_grad_(), k.clone().requires_grad_()
        if case.kv_heads == 0:
            return [q, k], k, k[..., : case.d_v]
        v = v.clone().requires_grad_()
        return [q, k, v], k, v

    # The sparse path gets NaN at keys nobody may see; their gradient must come out exactly 0.
    got_leaves, k_p, v_p = leaves(poison(x["k"], x["allowed"]), poison(x["v"], x["allowed"]))
    out = reference.sparse_attention(got_leaves[0], k_p, v_p, indices, 0.2)
    got = torch.autograd.grad(out, got_leaves, grad_out)
    want_leaves, k, v = leaves(x["k"], x["v"])
    want = torch.autograd.grad(dense_attention(want_leaves[0], k, v, x["raw"], x["allowed"], 0.2), want_leaves, grad_out)
    for g, w in zip(got, want):
        assert not g.isnan().any()
        assert rel_rms(g, w) < 1e-5
    assert (got[1][~x["allowed"].any(1)] == 0).all()


def test_chunking_does_not_change_result() -> None:
    torch.manual_seed(2)
    case = CASES["prefill_33_gqa_chunked"]
    x = make_inputs(case)
    indices = reference.mask_indices(x["raw"], case.kv, x["positions"], x["allowed"])
    whole = reference.sparse_attention(x["q"], x["k"], x["v"], indices, 0.3)
    for chunk in (1, 4, 32):
        assert torch.allclose(reference.sparse_attention(x["q"], x["k"], x["v"], indices, 0.3, chunk_size=chunk), whole)


def naive_indexer(q_idx, k_idx, weights, positions, key_ok, scale) -> torch.Tensor:
    logits = torch.einsum("bsjd,btd->bsjt", q_idx, k_idx) * scale
    scores = (weights[..., None] * logits.relu()).sum(2)
    allowed = key_ok[:, None, :] & (torch.arange(k_idx.shape[1]) <= positions[:, :, None])
    return scores.masked_fill(~allowed, float("-inf"))


@pytest.mark.parametrize("seq,kv,pads", [(7, 7, (0, 2)), (1, 50, (0, 9)), (33, 33, (5, 0))])
def test_indexer_scores_and_topk(seq: int, kv: int, pads: tuple[int, int]) -> None:
    torch.manual_seed(3)
    q_idx, k_idx, w = torch.randn(2, seq, 4, 16), torch.randn(2, kv, 16), torch.randn(2, seq, 4)
    key_ok = torch.ones(2, kv, dtype=torch.bool)
    for row, pad in enumerate(pads):
        key_ok[row, :pad] = False
    positions = (torch.arange(seq) + kv - seq).expand(2, seq)

    scores = reference.indexer_scores(q_idx, k_idx, w, None, scale=0.25, key_padding_mask=key_ok)
    expected = naive_indexer(q_idx, k_idx, w, positions, key_ok, 0.25)
    assert torch.equal(scores.isinf(), expected.isinf())
    finite = expected.isfinite()
    assert rel_rms(scores[finite], expected[finite]) < 1e-6

    topk = 12
    idx = reference.topk_indices(scores, topk)
    assert idx.shape == (2, seq, topk) and idx.dtype == torch.int32
    n_visible = finite.sum(-1)  # [B, S]
    for b in range(2):
        for s in range(seq):
            chosen = idx[b, s][idx[b, s] >= 0]
            want = expected[b, s].topk(min(topk, int(n_visible[b, s]))).indices
            assert sorted(chosen.tolist()) == sorted(want.tolist())
            assert len(chosen) == min(topk, int(n_visible[b, s]))


@pytest.mark.parametrize(
    "kv,k,ties",
    [(200, 4, False), (1024, 8, False), (4099, 16, False), (4099, 16, True), (640, 20, True), (9, 12, False)],
)
def test_topk_indices_is_the_top_k_on_long_rows(kv: int, k: int, ties: bool) -> None:
    """The two-level top-k (block maxima first) keeps the same scores as one plain top-k.

    The shapes make it take 4- to 32-wide blocks with and without a ragged tail, and the plain path
    (9 keys, k = 12); `ties` draws integer scores, so many values repeat across the k-th boundary.
    """
    gen = torch.Generator().manual_seed(kv + k)
    scores = torch.randint(0, 50, (2, 3, kv), generator=gen).float() if ties else torch.randn(2, 3, kv, generator=gen)
    scores[0, 1, kv // 2 :] = float("-inf")  # half the keys masked: fewer than k visible where kv is short
    scores[1, 2, :] = float("-inf")  # a query that sees nothing
    scores[0, 0, -1] = 1e4  # the best key last: in the ragged tail when kv is not a multiple of the block

    idx = reference.topk_indices(scores, k)

    assert idx.shape == (2, 3, k) and idx.dtype == torch.int32
    kept = reference.selected_scores(idx, scores)
    want = torch.nn.functional.pad(scores.topk(min(k, kv), -1).values, (0, max(0, k - kv)), value=float("-inf"))
    assert torch.equal(kept, want)
    for row in idx.flatten(0, 1):
        picked = row[row >= 0]
        assert picked.unique().numel() == picked.numel()
    assert (idx[1, 2] == -1).all()


def test_mask_indices_drops_future_padded_and_out_of_range() -> None:
    indices = torch.tensor([[[0, 1, 2, 3, -1, 9]]], dtype=torch.int32)  # query at position 2 of T=4
    allowed = torch.tensor([[[False, True, True, True]]])
    got = reference.mask_indices(indices, 4, q_positions=2, attention_mask=allowed)
    assert got.tolist() == [[[-1, 1, 2, -1, -1, -1]]]
