"""The int8 indexer (kernels.int8_indexer) selects the fp32 top-k: int8 proposes, fp32 re-ranks.

Selections are compared by the fp32 scores they keep (tie-proof: two keys with the same score are
equally right). The rows are long against k + margin, so the int8 proposal really prunes; with a margin of
0 and the at-risk check off it must get some selections wrong, which shows the data is hard enough
for the re-ranking and the check to matter.
"""

import pytest
import torch

from kernels import int8_indexer, mla, reference
from kernels.mla import indexer_topk

HEADS, DIM = 4, 32


def data(batch: int, seq_len: int, kv_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random indexer inputs and the [B, S, T] causal + left-padding mask (row 0 padded)."""
    gen = torch.Generator().manual_seed(seed)
    iq = torch.randn(batch, seq_len, HEADS, DIM, generator=gen)
    ik = torch.randn(batch, kv_len, DIM, generator=gen)
    w = torch.randn(batch, seq_len, HEADS, generator=gen)
    allowed = torch.ones(batch, seq_len, kv_len, dtype=torch.bool)
    allowed[0, :, : kv_len // 5] = False
    allowed &= torch.arange(kv_len) <= (torch.arange(seq_len) + kv_len - seq_len)[:, None]
    return iq, ik, w, allowed


@pytest.mark.parametrize(("batch", "seq_len", "kv_len", "topk", "chunk"), [(2, 96, 1500, 16, None), (1, 300, 300, 32, 64), (1, 70, 2000, 8, 7)])
def test_int8_selection_keeps_the_fp32_top_k(batch: int, seq_len: int, kv_len: int, topk: int, chunk: int | None) -> None:
    iq, ik, w, allowed = data(batch, seq_len, kv_len, seed=kv_len + seq_len)
    full = reference.indexer_scores(iq, ik, w, scale=0.2).masked_fill(~allowed, float("-inf"))
    want = full.topk(topk, dim=-1).values

    got = indexer_topk(iq, ik, w, scale=0.2, topk=topk, allowed=allowed, chunk_size=chunk, int8=True)

    assert got.shape == (batch, seq_len, topk) and got.dtype == torch.int32
    # Empty slots (-1) keep -inf: they sit exactly where fewer than k keys are visible.
    assert torch.equal(reference.selected_scores(got, full), want)


def test_queries_the_proposal_may_have_failed_are_scored_again_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """No candidates beyond k: int8 error alone changes selections, and the at-risk check catches every one."""
    iq, ik, w, allowed = data(1, 96, 1500, seed=1596)
    full = reference.indexer_scores(iq, ik, w, scale=0.2).masked_fill(~allowed, float("-inf"))
    want = full.topk(16, dim=-1).values
    common = dict(offset=1500 - 96, scale=0.2, key_padding_mask=allowed[:, -1], chunk_size=32, margin=0)

    checked = int8_indexer.indexer_topk(iq, ik, w, 16, **common)
    monkeypatch.setattr(int8_indexer, "_at_risk", lambda *_: torch.empty(0, dtype=torch.long))
    unchecked = int8_indexer.indexer_topk(iq, ik, w, 16, **common)

    assert torch.equal(reference.selected_scores(checked, full), want)
    assert not torch.equal(reference.selected_scores(unchecked, full), want)


def test_quantize_rows_round_trips_within_half_a_step() -> None:
    x = torch.randn(5, 7, 33) * torch.logspace(-3, 3, 7)[:, None]
    x[0, 0] = 0.0  # an all-zero row must not divide by zero
    x8, scale = int8_indexer.quantize_rows(x)
    assert x8.dtype == torch.int8 and scale.shape == (5, 7)
    assert (x8.abs() <= 127).all() and (x8.abs().amax(-1)[x.abs().amax(-1) > 0] == 127).all()
    err = (x8.float() * scale[..., None] - x).abs()
    assert (err <= scale[..., None] / 2 * (1 + 1e-6)).all()
    assert torch.equal(x8[0, 0], torch.zeros(33, dtype=torch.int8))


def test_the_int8_indexer_runs_only_where_it_measured_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """The measured points of docs/experiments.md ("When the int8 indexer pays"; fp32 time / int8 time): int8 above 1, fp32 below."""
    assert mla.int8_pays(16384, 16384, 256, 1024) and mla.int8_pays(8192, 8192, 256, 4096)  # 1.28, 2.06
    assert mla.int8_pays(16384, 16384, 256, 512) and mla.int8_pays(16384, 16384, 512, 1024)  # 1.10, 1.33
    assert not mla.int8_pays(16384, 16384, 256, 256)  # 0.86: a narrow indexer
    assert not mla.int8_pays(16384, 16384, 1024, 1024) and not mla.int8_pays(32768, 32768, 1024, 512)  # 0.49, 0.50: large k
    assert not mla.int8_pays(16384, 16384, 2048, 8192)  # V3.2's own k and width at 16K: 0.38-0.57
    assert not mla.int8_pays(4096, 4096, 256, 1024) and not mla.int8_pays(1, 65536, 256, 8192)  # a short prefill, a decode step

    calls = []
    real = int8_indexer.indexer_topk
    monkeypatch.setattr(int8_indexer, "indexer_topk", lambda iq, *a, **kw: calls.append(iq.shape) or real(iq, *a, **kw))
    gen = torch.Generator().manual_seed(0)
    for heads in (4, 8):  # 4 x 64 = 256 wide: fp32; 8 x 64 = 512: int8
        iq, ik, w = torch.randn(1, 64, heads, 64, generator=gen), torch.randn(1, 8192, 64, generator=gen), torch.randn(1, 64, heads, generator=gen)
        got = indexer_topk(iq, ik, w, scale=0.125, topk=256)
        want = reference.indexer_scores(iq, ik, w, q_positions=8192 - 64, scale=0.125)
        assert torch.equal(reference.selected_scores(got, want), want.topk(256, dim=-1).values)
    assert calls == [(1, 64, 8, 64)]
