"""The DSA Triton kernels on a GPU at DeepSeek-V3.2's shapes: correctness against `kernels.reference`,
TFLOP/s of sparse prefill forward, backward and decode, and sparse vs dense flash prefill by length.

    scripts/gpu_check.sh                                   # on one H100/H200, a few minutes; writes "dsa gpu" in docs/benchmarks.md
    TRITON_INTERPRET=1 .venv/bin/python -m benchmarks.dsa_gpu --quick --device cpu --no-record   # every path, tiny shapes, CPU

Shapes: absorbed MLA, 128 query heads over one latent of 576 (values its first 512), top-2048,
indexer 64 heads x 128, bf16. FLOPs counted as FlashMLA counts them: forward 2·S·H·K·(d_qk + d_v);
backward 2·S·H·K·(2·d_qk + 2·d_v) (dQ, dK, dV, dP; recomputing the probabilities is not counted).

Sparse vs dense: one layer's attention over a causal prefill of T tokens. Sparse = the indexer's
top-k (`triton_dsa.indexer_topk`) + `triton_dsa.sparse_attention`; dense = torch SDPA (flash) in
V3's prefill form, 128 heads of q.k 192 (128 + 64 rope) and v 128 zero-padded to 192 (flash wants
one head dim). Times are medians of repeats after a warm-up, all in this one process.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import reference, triton_dsa


@dataclass(frozen=True)
class Shape:
    heads: int = 128
    d_qk: int = 576
    d_v: int = 512
    topk: int = 2048
    indexer_heads: int = 64
    indexer_dim: int = 128
    dense_qk: int = 192
    dense_v: int = 128


FULL = Shape()
QUICK = Shape(heads=16, d_qk=40, d_v=32, topk=24, indexer_heads=4, indexer_dim=16, dense_qk=24, dense_v=16)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.float(), expected.float()
    return ((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()).item()


def attention_inputs(shape: Shape, batch: int, seq: int, ctx: int, device: torch.device, dtype: torch.dtype, gen: torch.Generator):
    """q [B,S,H,576], the latent [B,T,576] (v its first 512) and causal top-k indices of the last S of T positions."""
    q = torch.randn(batch, seq, shape.heads, shape.d_qk, generator=gen, device=device).to(dtype)
    latent = torch.randn(batch, ctx, shape.d_qk, generator=gen, device=device).to(dtype)
    positions = torch.arange(ctx - seq, ctx, device=device)
    scores = torch.rand(batch, seq, ctx, generator=gen, device=device)
    scores = scores.masked_fill(torch.arange(ctx, device=device) > positions[:, None], float("-inf"))
    indices = reference.topk_indices(scores, shape.topk).contiguous()
    return q, latent, indices


def check(shape: Shape, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> list[str]:
    """Forward, backward and indexer top-k against the reference on random inputs; raises on a mismatch."""
    lines = []
    for seq, ctx in [(64, 4 * shape.topk), (1, 4 * shape.topk + 3)]:  # prefill block, decode step
        q, latent, idx = attention_inputs(shape, 2, seq, ctx, device, dtype, gen)
        q.requires_grad_()
        latent.requires_grad_()
        scale = shape.d_qk**-0.5
        got = triton_dsa.sparse_attention(q, latent, latent[..., : shape.d_v], idx, scale)
        q32, lat32 = q.detach().float().requires_grad_(), latent.detach().float().requires_grad_()
        want = reference.sparse_attention(q32, lat32, lat32[..., : shape.d_v], idx, scale)
        grad = torch.randn(want.shape, generator=gen, device=device)
        got_grads = torch.autograd.grad(got, [q, latent], grad.to(dtype))
        want_grads = torch.autograd.grad(want, [q32, lat32], grad)
        errors = {"out": rel_rms(got, want), "dq": rel_rms(got_grads[0], want_grads[0]), "dlatent": rel_rms(got_grads[1], want_grads[1])}
        bad = {k: v for k, v in errors.items() if not v < 2e-2}
        if bad:
            raise AssertionError(f"sparse attention S={seq} T={ctx}: relative RMS error {bad} against the fp32 reference")
        lines.append(f"sparse attention S={seq} T={ctx}: relative RMS vs fp32 reference " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))

    ctx, n_q = 4 * shape.topk, 64
    iq = torch.randn(1, n_q, shape.indexer_heads, shape.indexer_dim, generator=gen, device=device)
    ik = torch.randn(1, ctx, shape.indexer_dim, generator=gen, device=device)
    w = torch.randn(1, n_q, shape.indexer_heads, generator=gen, device=device)
    got = triton_dsa.indexer_topk(iq, ik, w, shape.topk, scale=shape.indexer_dim**-0.5)
    scores = reference.indexer_scores(iq, ik, w, scale=shape.indexer_dim**-0.5)
    want = reference.topk_indices(scores, shape.topk)
    if not torch.equal(reference.selected_scores(got, scores), reference.selected_scores(want, scores)):
        raise AssertionError("indexer top-k keeps other scores than the reference")
    lines.append(f"indexer top-{shape.topk} over T={ctx}: the same kept scores as the reference")
    return lines


def throughput(shape: Shape, device: torch.device, dtype: torch.dtype, gen: torch.Generator, seq: int, repeats: int) -> list[tuple[str, float, float]]:
    """(what, seconds, TFLOP/s) of sparse prefill forward and backward, and of a batch of decode steps."""
    out = []
    q, latent, idx = attention_inputs(shape, 1, seq, seq, device, dtype, gen)
    scale = shape.d_qk**-0.5
    useful = 2 * shape.heads * (idx >= 0).sum().item()  # 2 * H * every (query, selected key) pair
    fwd_flops = useful * (shape.d_qk + shape.d_v)
    seconds = timed(lambda: triton_dsa.sparse_attention(q, latent, latent[..., : shape.d_v], idx, scale), device, repeats)
    out.append((f"prefill forward, S = T = {seq}", seconds, fwd_flops / seconds / 1e12))
    q.requires_grad_()
    latent.requires_grad_()
    o = triton_dsa.sparse_attention(q, latent, latent[..., : shape.d_v], idx, scale)
    grad = torch.randn_like(o)
    seconds = timed(lambda: torch.autograd.grad(o, [q, latent], grad, retain_graph=True), device, repeats)
    out.append((f"prefill backward, S = T = {seq}", seconds, useful * (2 * shape.d_qk + 2 * shape.d_v) / seconds / 1e12))

    batch, ctx = (128, 32768) if shape == FULL else (4, 4 * shape.topk)
    q, latent, idx = attention_inputs(shape, batch, 1, ctx, device, dtype, gen)
    seconds = timed(lambda: triton_dsa.sparse_attention(q, latent, latent[..., : shape.d_v], idx, scale), device, repeats)
    flops = 2 * batch * shape.heads * shape.topk * (shape.d_qk + shape.d_v)
    out.append((f"decode, batch {batch}, T = {ctx}", seconds, flops / seconds / 1e12))
    return out


def sparse_vs_dense(shape: Shape, device: torch.device, dtype: torch.dtype, gen: torch.Generator, lengths: list[int], repeats: int) -> list[tuple[int, float, float, float]]:
    """(T, indexer + top-k s, sparse attention s, dense flash s) of one layer's causal prefill."""
    rows = []
    for t in lengths:
        iq = torch.randn(1, t, shape.indexer_heads, shape.indexer_dim, generator=gen, device=device).to(dtype)
        ik = torch.randn(1, t, shape.indexer_dim, generator=gen, device=device).to(dtype)
        w = torch.randn(1, t, shape.indexer_heads, generator=gen, device=device).to(dtype)
        select = lambda: triton_dsa.indexer_topk(iq, ik, w, shape.topk, scale=shape.indexer_dim**-0.5)  # noqa: E731
        idx = select()
        q = torch.randn(1, t, shape.heads, shape.d_qk, generator=gen, device=device).to(dtype)
        latent = torch.randn(1, t, shape.d_qk, generator=gen, device=device).to(dtype)
        indexer_s = timed(select, device, repeats)
        attend_s = timed(lambda: triton_dsa.sparse_attention(q, latent, latent[..., : shape.d_v], idx, shape.d_qk**-0.5), device, repeats)
        del q, latent, idx, iq, ik, w
        dq = torch.randn(1, shape.heads, t, shape.dense_qk, generator=gen, device=device).to(dtype)
        dk = torch.randn(1, shape.heads, t, shape.dense_qk, generator=gen, device=device).to(dtype)
        dv = F.pad(torch.randn(1, shape.heads, t, shape.dense_v, generator=gen, device=device), (0, shape.dense_qk - shape.dense_v)).to(dtype)
        dense_s = timed(lambda: F.scaled_dot_product_attention(dq, dk, dv, is_causal=True), device, repeats)
        del dq, dk, dv
        rows.append((t, indexer_s, attend_s, dense_s))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny shapes: every path in seconds (CPU interpreter)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not write docs/benchmarks.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = QUICK if args.quick else FULL
    dtype = torch.float16 if device.type == "cpu" else torch.bfloat16  # the interpreter's bf16 tl.dot is wrong
    gen = torch.Generator(device=device).manual_seed(0)
    repeats = 1 if args.quick else 5
    lengths = [64] if args.quick else [2048, 4096, 8192, 16384, 32768, 65536]

    started = time.perf_counter()
    checks = check(shape, device, dtype, gen)
    speed = throughput(shape, device, dtype, gen, 64 if args.quick else 8192, repeats)
    versus = sparse_vs_dense(shape, device, dtype, gen, lengths, repeats)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    text = "\n".join([
        "## DSA Triton kernels on a GPU", "",
        f"`scripts/gpu_check.sh` ({gpu}; {time.perf_counter() - started:.0f} s; shapes: {shape}).", "",
        *(f"- {line}" for line in checks), "",
        "| kernel | ms | TFLOP/s |", "| --- | --- | --- |",
        *(f"| {what} | {s * 1e3:.2f} | {tflops:.1f} |" for what, s, tflops in speed), "",
        "| T | indexer + top-k (ms) | sparse attention (ms) | sparse total (ms) | dense flash (ms) | dense / sparse |",
        "| --- | --- | --- | --- | --- | --- |",
        *(f"| {t} | {i * 1e3:.2f} | {a * 1e3:.2f} | {(i + a) * 1e3:.2f} | {d * 1e3:.2f} | {d / (i + a):.2f}x |" for t, i, a, d in versus),
    ])
    print(text)
    if not args.no_record:
        from benchmarks.record import write_section

        write_section("dsa gpu", text)


if __name__ == "__main__":
    main()
