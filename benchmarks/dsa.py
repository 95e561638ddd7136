"""DeepSeek Sparse Attention on CPU: our path vs transformers' masked-dense DSA vs dense attention, one layer.

    .venv/bin/python -m benchmarks.dsa            # 5-8 minutes on 2 cores; writes the "dsa cpu" section of docs/benchmarks.md

    .venv/bin/python -m benchmarks.dsa --shape v3.2   # V3.2's proportions (see SHAPES); writes "dsa cpu v3.2"

Every contender is the same `DeepseekV32Attention` layer (fp32, seed-0 random weights, one of SHAPES):

    ours          the layer as `kernels.mla.SparseMLAAttention` under "dsa_sparse": chunked, causally trimmed
                  indexer + top-k (int8 scores re-ranked in fp32 where `kernels.mla.int8_pays`), then
                  `kernels.reference.sparse_attention` in absorbed-MLA form over the latent.
    masked-dense  transformers' own path (`sdpa`, index_topk = k): the top-k is scattered into an L x L mask and
                  SDPA runs dense over it.
    dense         transformers' `sdpa` with index_topk >= T (decode only: the dense decode step of the stock model).
    dense-flash   (prefill) the layer's projections + causal SDPA, no indexer, no mask, V zero-padded to the QK
                  width so CPU SDPA takes its flash kernel: the fastest dense prefill torch offers here.
    dense-absorbed (prefill) our projections + causal flash SDPA over the shared latent in absorbed form (every
                  head attends to [c_kv | k_rope], values c_kv): dense MLA as V3.2 decodes it.

Decode steps run through the layer with a cache holding T context tokens in each path's own layout (ours: the
latent in a `kernels.cache.PreallocatedCache`, and again in transformers' `DynamicCache`, which copies the whole
cache to append a token; stock: latent + rope key in a `DynamicCache`, expanded per head by `expand_kv` every
step). Two kernel-only columns isolate the attention over the latent cache: our indexer + sparse attention vs
dense absorbed attention.

Times are medians of interleaved repeats in this one process. The causal mask a model builds once per forward and
hands every layer is built outside the timing, like the layer's other inputs. Peak memory of each prefill cell is
measured in a fresh subprocess (peak RSS during the forward minus the RSS before it; the high-water mark is reset through
/proc/self/clear_refs). One OpenMP thread by default: on this shared 2-core machine a second thread stalls on
descheduled peers, which inflates many-small-op paths far more than few-big-GEMM ones.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
# "small": the shape of the first-wave benchmark. 4 heads so that masked-dense fits at 16K (it holds two
# H x L x L fp32 tensors); its 4 x 64 indexer costs as much as the attention it replaces.
# "v3.2": DeepSeek-V3.2's layer (hidden 7168, q_lora 1536, 128 heads over kv_lora 512 + rope 64, nope 128,
# v 128, a 64 x 128 indexer, k = 2048 at 128K context) with every head count and the hidden/q_lora widths
# divided by 8, so that the ratio of indexer to dense attention FLOPs (HI*DI : H*(Dqk + Dv) = 64*128 :
# 128*320 = 0.2) and of projections to attention stay V3.2's, and k scaled with the context: each query
# reads the same 1/64 of a 16K context that V3.2's k = 2048 reads of 128K. 16 heads, not fewer: the sparse
# path's per-query costs that do not grow with heads (top-k, the gather) would weigh more than at V3.2's
# 128 (docs/experiments.md, 2026-12-06: at 8 heads the sparse 16K prefill gained less over dense flash).
# Masked-dense needs two 16 x L x L fp32 tensors, over the memory cap at 16K.
SHAPES = {
    "small": dict(
        hidden_size=512, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=128, kv_lora_rank=128,
        qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, index_n_heads=4, index_head_dim=64, index_topk=256,
    ),
    "v3.2": dict(
        hidden_size=896, num_attention_heads=16, num_key_value_heads=16, q_lora_rank=192, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, index_n_heads=8, index_head_dim=128, index_topk=256,
    ),
}
SECTIONS = {"small": "dsa cpu", "v3.2": "dsa cpu v3.2"}
PREFILL_L = {"small": (1024, 4096, 16384), "v3.2": (4096, 8192, 16384)}
DECODE_T = (4096, 16384, 65536)
PREFILL_CASES = ("ours", "masked-dense", "dense-flash", "dense-absorbed")
DECODE_CASES = ("ours", "ours-dynamic", "masked-dense", "dense")
MEM_CAP_GIB = 18.0  # a forward that needs more raises instead of taking the machine down


def build(shape: str):
    """(stock layer under sdpa, the same weights as SparseMLAAttention under dsa_sparse, rotary embedding)."""
    from transformers import DeepseekV32Config
    from transformers.models.deepseek_v32.modeling_deepseek_v32 import DeepseekV32Attention, DeepseekV32RotaryEmbedding

    from kernels.mla import SparseMLAAttention

    config = DeepseekV32Config(**SHAPES[shape], num_hidden_layers=1, max_position_embeddings=max(DECODE_T) + 1)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    stock = DeepseekV32Attention(config, layer_idx=0).eval()
    ours = copy.deepcopy(stock)
    ours.__class__ = SparseMLAAttention
    ours.config._attn_implementation = "dsa_sparse"
    return stock, ours, DeepseekV32RotaryEmbedding(config)


def inputs(layer, rope, length: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, length, layer.config.hidden_size, generator=gen)
    pos = torch.arange(length)[None]
    return x, rope(x, pos), pos


def causal_mask(length: int) -> torch.Tensor:
    """The [1, 1, L, L] bool mask a DeepseekV32 model builds once per forward and hands every layer."""
    return torch.ones(length, length, dtype=torch.bool).tril()[None, None]


def prefill(case: str, stock, ours, x, pe, pos, mask) -> torch.Tensor:
    length = x.shape[1]
    if case == "dense-flash":
        from transformers.models.deepseek_v32.modeling_deepseek_v32 import apply_rotary_pos_emb_interleave

        a, (cos, sin) = stock, pe
        q = a.q_b_proj(a.q_a_layernorm(a.q_a_proj(x))).view(1, length, a.num_heads, a.qk_head_dim).transpose(1, 2)
        q_nope, q_rot = q.split([a.qk_nope_head_dim, a.qk_rope_head_dim], dim=-1)
        kv_pass, k_rot = a.kv_a_proj_with_mqa(x).split([a.kv_lora_rank, a.qk_rope_head_dim], dim=-1)
        q_rot, k_rot = apply_rotary_pos_emb_interleave(q_rot, k_rot[:, None], cos, sin)
        key, value = a.expand_kv(a.kv_a_layernorm(kv_pass)[:, None], k_rot)
        v = F.pad(value, (0, a.qk_head_dim - value.shape[-1]))  # equal widths select CPU SDPA's flash kernel
        out = F.scaled_dot_product_attention(torch.cat([q_nope, q_rot], -1), key, v, is_causal=True, scale=a.scaling)
        return a.o_proj(out[..., : a.v_head_dim].transpose(1, 2).flatten(2))
    if case == "dense-absorbed":
        q_abs, latent, _ = ours.project(x, pe)
        v = F.pad(latent[..., : ours.kv_lora_rank], (0, ours.qk_rope_head_dim))
        out = F.scaled_dot_product_attention(
            q_abs.transpose(1, 2), latent[:, None], v[:, None], is_causal=True, scale=ours.scaling, enable_gqa=True
        )
        return ours.output(out[..., : ours.kv_lora_rank].transpose(1, 2))
    layer = ours if case == "ours" else stock
    return layer(x, pe, mask, position_ids=pos)[0]


def selection_check(stock, ours, x, pe, pos, outs) -> str:
    """Where both indexers pick the same top-k set, ours must give masked-dense's output."""
    from kernels import reference
    from kernels.mla import indexer_topk

    length, topk = x.shape[1], ours.indexer.index_topk
    mask = torch.ones(length, length, dtype=torch.bool).tril()[None]
    theirs = stock.indexer(x, stock.q_a_layernorm(stock.q_a_proj(x)), pe, mask, pos)
    theirs = reference.mask_indices(theirs, length).sort(-1).values
    _, _, (iq, ik, w) = ours.project(x, pe)
    mine = indexer_topk(iq, ik, w, ours.indexer.softmax_scale, topk).sort(-1).values
    same = (theirs == mine).all(-1)[0]
    diff = (outs["ours"] - outs["masked-dense"]).abs()[0].amax(-1)
    return (f"prefill L={length // 1024}K: {int((~same).sum())}/{length} queries get a different top-k set from the two "
            f"indexers (exact score ties, mostly relu-zero scores, broken differently by a trimmed vs full-row top-k); "
            f"over the other queries ours vs masked-dense max |Δ| {diff[same].max():.1e} (mean |out| "
            f"{outs['masked-dense'].abs().mean():.1e})")


def topk_agreement(ours, x, pe) -> dict:
    """The int8 indexer's selections (what ours runs at prefill) against the fp32 indexer's, every query.

    A query counts as "same" when both pick the same key set, "ties" when the sets differ only in keys
    whose exact fp32 score equals the k-th best (fp32 top-k itself is then ambiguous), "missed" otherwise.
    Also times both indexers once on these inputs.
    """
    from kernels import reference
    from kernels.mla import indexer_topk

    length, topk, scale = x.shape[1], ours.indexer.index_topk, ours.indexer.softmax_scale
    _, _, (iq, ik, w) = ours.project(x, pe)
    started = time.perf_counter()
    fp32 = indexer_topk(iq, ik, w, scale, topk, int8=False)
    fp32_s = time.perf_counter() - started
    started = time.perf_counter()
    int8 = indexer_topk(iq, ik, w, scale, topk, int8=True)
    int8_s = time.perf_counter() - started
    same = ties = 0
    for s0 in range(0, length, 512):
        s1 = min(length, s0 + 512)
        full = reference.indexer_scores(iq[:, s0:s1], ik[:, :s1], w[:, s0:s1], q_positions=s0, scale=scale)[0]
        a, b = fp32[0, s0:s1], int8[0, s0:s1]
        equal = (a.sort(-1).values == b.sort(-1).values).all(-1)
        same += int(equal.sum())
        ties += int(((reference.selected_scores(a, full) == reference.selected_scores(b, full)).all(-1) & ~equal).sum())
    return dict(queries=length, same=same, ties=ties, missed=length - same - ties, fp32_s=fp32_s, int8_s=int8_s)


def decode_context(ours, rope, ctx: int):
    """Projections of ctx + 1 random tokens: the first ctx fill the caches, the last one is decoded."""
    x, (cos, sin), pos = inputs(ours, rope, ctx + 1, seed=2)
    with torch.no_grad():
        q_abs, latent, (iq, ik, w) = ours.project(x, (cos, sin))
    return dict(x=x[:, ctx:], pe=(cos[:, ctx:], sin[:, ctx:]), pos=pos[:, ctx:], ctx=ctx,
                latent=latent, ik=ik, q_abs=q_abs[:, ctx:], iq=iq[:, ctx:], w=w[:, ctx:])


def decode_step(case: str, stock, ours, d) -> torch.Tensor:
    """One new token through the layer; the cache is filled first, outside the timing (the caller reads the time from `d["_elapsed"]`)."""
    from transformers import DynamicCache

    from kernels.cache import PreallocatedCache

    ctx, d_c = d["ctx"], stock.kv_lora_rank
    cache = PreallocatedCache(stock.config, capacity=ctx + 1) if case == "ours" else DynamicCache(config=stock.config)
    latent = d["latent"][:, None, :ctx]
    if case in ("ours", "ours-dynamic"):
        cache.update(latent, latent.new_empty(1, 1, ctx, 0), 0)
    else:
        cache.update(latent[..., :d_c].contiguous(), latent[..., d_c:].contiguous(), 0)
    cache.update_indexer(d["ik"][:, :ctx].contiguous(), 0)
    mask = torch.ones(1, 1, 1, ctx + 1, dtype=torch.bool)
    layer = ours if case.startswith("ours") else stock
    topk = ours.indexer.index_topk
    stock.indexer.index_topk = 1 << 30 if case == "dense" else topk
    started = time.perf_counter()
    out = layer(d["x"], d["pe"], mask, past_key_values=cache, position_ids=d["pos"])[0]
    d["_elapsed"] = time.perf_counter() - started
    stock.indexer.index_topk = topk
    return out


def latent_kernels(case: str, ours, d) -> float:
    """Attention alone over the ctx + 1 cached latents: ours (indexer + sparse) or dense absorbed; seconds."""
    from kernels import reference
    from kernels.mla import indexer_topk

    lat, d_c = d["latent"], ours.kv_lora_rank
    started = time.perf_counter()
    if case == "ours":
        idx = indexer_topk(d["iq"], d["ik"], d["w"], ours.indexer.softmax_scale, ours.indexer.index_topk)
        reference.sparse_attention(d["q_abs"], lat, lat[..., :d_c], idx, ours.scaling)
    else:
        scores = torch.einsum("shc,tc->sht", d["q_abs"][0], lat[0]) * ours.scaling
        torch.einsum("sht,tc->shc", scores.softmax(-1), lat[0, :, :d_c])
    return time.perf_counter() - started


# ------------------------------------------------------------------------------------------- memory

def _status_mib(key: str) -> float:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) / 1024


def child(spec: str, shape: str) -> None:
    """Subprocess entry: peak MiB of one prefill forward, printed as one JSON line."""
    import resource

    case, length = spec.split(":")
    if case == "calibrate":
        fn = lambda: torch.ones(2**28)  # noqa: E731 - a known 1 GiB allocation checks the method
    else:
        stock, ours, rope = build(shape)
        prefill(case, stock, ours, *inputs(stock, rope, 128), causal_mask(128))  # lazily initialised kernels and pools
        args = (*inputs(stock, rope, int(length)), causal_mask(int(length)))
        fn = lambda: prefill(case, stock, ours, *args)  # noqa: E731
    gc.collect()
    limit = int(_status_mib("VmSize") * 2**20 + MEM_CAP_GIB * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_mib("VmRSS")
    try:
        fn()
    except MemoryError as err:
        print(json.dumps({"over_cap": str(err)[:200]}))
        return
    except RuntimeError as err:
        # torch reports a refused allocation as a RuntimeError; anything else is a real failure.
        key = "over_cap" if "alloc" in str(err).lower() or "memory" in str(err).lower() else "error"
        print(json.dumps({key: str(err)[:200]}))
        return
    print(json.dumps({"peak_mib": _status_mib("VmHWM") - before}))


def peak_in_child(spec: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.dsa", "--threads", str(args.threads), "--shape", args.shape, "--child", spec]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}"}


# ---------------------------------------------------------------------------------------------- main

def med(xs) -> float | None:
    return statistics.median(xs) if xs else None


def fmt_ms(secs: float | None) -> str:
    if secs is None:
        return "—"
    ms = secs * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


def ratio(num: float | None, den: float | None) -> str:
    return "—" if not num or not den else f"{num / den:.1f}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shape", choices=list(SHAPES), default="small")
    parser.add_argument("--prefill", type=int, nargs="*", help="prefill lengths (default: the shape's)")
    parser.add_argument("--decode", type=int, nargs="*", default=list(DECODE_T))
    parser.add_argument("--no-write", action="store_true", help="print the section, don't write docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if args.child:
        child(args.child, args.shape)
        return
    args.prefill = args.prefill or list(PREFILL_L[args.shape])
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    wall0 = time.monotonic()
    stock, ours, rope = build(args.shape)

    calib = peak_in_child("calibrate:0", args)
    peaks = {(c, n): peak_in_child(f"{c}:{n}", args) for n in args.prefill for c in PREFILL_CASES}
    log(f"calibration {calib}; peaks {peaks}")

    times: dict[tuple[str, int], list[float]] = {}
    agreement: dict[int, dict] = {}
    checks = []
    for n in args.prefill:
        x, pe, pos = inputs(stock, rope, n)
        mask = causal_mask(n)
        reps = 3 if n <= 4096 else 2
        outs = {}
        # A cell that ran out of memory in its subprocess would take this process down too.
        cases = [c for c in PREFILL_CASES if "peak_mib" in peaks[(c, n)]]
        for rep in range(reps):
            for case in cases:
                started = time.perf_counter()
                outs[case] = prefill(case, stock, ours, x, pe, pos, mask)
                times.setdefault((case, n), []).append(time.perf_counter() - started)
                log(f"prefill {case} L={n}: {times[(case, n)][-1] * 1e3:.0f} ms")
        if n == min(args.prefill) and "masked-dense" in outs:
            checks.append(selection_check(stock, ours, x, pe, pos, outs))
        agreement[n] = topk_agreement(ours, x, pe)
        log(f"top-k agreement L={n}: {agreement[n]}")
        del x, pe, pos, mask, outs
        gc.collect()

    dtimes: dict[tuple[str, int], list[float]] = {}
    for ctx in args.decode:
        d = decode_context(ours, rope, ctx)
        outs = {}
        for _ in range(5):
            for case in DECODE_CASES:
                outs[case] = decode_step(case, stock, ours, d)
                dtimes.setdefault((case, ctx), []).append(d["_elapsed"])
            for case in ("ours", "dense"):
                dtimes.setdefault((f"latent-{case}", ctx), []).append(latent_kernels(case, ours, d))
        log(f"decode T={ctx}: " + ", ".join(f"{k} {fmt_ms(med(v))} ms" for (k, c), v in dtimes.items() if c == ctx))
        checks.append(f"decode T={ctx // 1024}K ours vs masked-dense max |Δ| {(outs['ours'] - outs['masked-dense']).abs().max():.1e}")
        del d
        gc.collect()

    body = render(args, calib, peaks, times, dtimes, agreement, checks, time.monotonic() - wall0)
    if not args.no_write:
        from benchmarks.record import write_section

        write_section(SECTIONS[args.shape], body)
    print(body)


def render(args, calib, peaks, times, dtimes, agreement, checks, wall) -> str:
    t = lambda c, n: med(times.get((c, n)))  # noqa: E731
    dt = lambda c, n: med(dtimes.get((c, n)))  # noqa: E731

    def peak(c, n):
        p = peaks.get((c, n), {})
        if "peak_mib" in p:
            return f"{p['peak_mib']:,.0f}"
        return "over the cap" if "over_cap" in p else f"failed: {p['error'][:60]}" if "error" in p else "—"

    shape = ", ".join(f"{k} {v}" for k, v in SHAPES[args.shape].items())
    command = ".venv/bin/python -m benchmarks.dsa" + ("" if args.shape == "small" else f" --shape {args.shape}")
    lines = [
        f"## DeepSeek Sparse Attention on CPU (one layer, fp32, shape \"{args.shape}\")",
        "",
        f"Command: `{command}`",
        "",
        f"One `DeepseekV32Attention` layer ({shape}), seed-0 random weights shared by every contender, batch 1, "
        f"k = {SHAPES[args.shape]['index_topk']}, torch {torch.__version__}, {args.threads} thread(s). **ours** = the layer as "
        "`kernels.mla.SparseMLAAttention` (what `enable_sparse_attention(model)` installs and the generate stage runs); "
        "**masked-dense** = transformers' DSA path (`sdpa`, top-k scattered into an L×L mask); **dense** = transformers "
        "with index_topk ≥ T; **dense-flash** = the layer's projections + causal flash SDPA, no indexer; "
        "**dense-absorbed** = our projections + causal flash SDPA over the shared latent (dense MLA in MQA form). Times: "
        "median of interleaved repeats in one process (prefill n = 3, 2 beyond 4K; decode n = 5); the causal mask the "
        "model builds once per forward for all its layers is built outside the timing. Peak: MiB above the "
        f"RSS before the forward, one fresh subprocess per cell, capped at {MEM_CAP_GIB:.0f} GiB (check: a 1024 MiB "
        f"tensor reads as {calib.get('peak_mib', float('nan')):.0f}).",
        "",
        "| prefill L | ours ms | masked-dense ms | dense-flash ms | dense-absorbed ms | masked-dense / ours | dense-flash / ours | dense-absorbed / ours | peak MiB ours | peak MiB masked-dense | peak MiB dense-flash | ours / masked-dense peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in args.prefill:
        p_o, p_m = peaks.get(("ours", n), {}).get("peak_mib"), peaks.get(("masked-dense", n), {}).get("peak_mib")
        lines.append(
            f"| {n // 1024}K | {fmt_ms(t('ours', n))} | {fmt_ms(t('masked-dense', n))} | {fmt_ms(t('dense-flash', n))} "
            f"| {fmt_ms(t('dense-absorbed', n))} | {ratio(t('masked-dense', n), t('ours', n))} "
            f"| {ratio(t('dense-flash', n), t('ours', n))} | {ratio(t('dense-absorbed', n), t('ours', n))} "
            f"| {peak('ours', n)} | {peak('masked-dense', n)} | {peak('dense-flash', n)} "
            f"| {'—' if not (p_o and p_m) else f'{p_o / p_m:.3f}'} |"
        )
    from kernels.int8_indexer import DEFAULT_MARGIN

    lines += [
        "",
        "Where `kernels.mla.int8_pays` (from 8K keys and 32 k, indexer heads x dim at least 512, k at most 512), the "
        f"indexer inside ours at prefill scores in int8 and re-ranks its best k + {DEFAULT_MARGIN} candidates in fp32 "
        "(`kernels.int8_indexer`); elsewhere it is the fp32 indexer. The table runs both at every "
        "length, on the same inputs, one run each. Same set: both pick the same keys; ties: the sets differ only in "
        "keys whose fp32 score equals the k-th best (the fp32 top-k is ambiguous there); missed: the int8 indexer lost "
        "a key of the fp32 top-k.",
        "",
        "| prefill L | fp32 indexer ms | int8 + fp32 re-rank ms | fp32 / int8 | same set | ties | missed |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, a in agreement.items():
        lines.append(f"| {n // 1024}K | {fmt_ms(a['fp32_s'])} | {fmt_ms(a['int8_s'])} | {ratio(a['fp32_s'], a['int8_s'])} "
                     f"| {a['same']:,} | {a['ties']:,} | {a['missed']:,} |")
    lines += [
        "",
        "| decode T | ours ms | ours, DynamicCache ms | masked-dense ms | dense ms | dense / ours | DynamicCache / preallocated | latent kernels: ours ms | latent kernels: dense absorbed ms | dense absorbed / ours |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in args.decode:
        lines.append(
            f"| {n // 1024}K | {fmt_ms(dt('ours', n))} | {fmt_ms(dt('ours-dynamic', n))} | {fmt_ms(dt('masked-dense', n))} "
            f"| {fmt_ms(dt('dense', n))} | {ratio(dt('dense', n), dt('ours', n))} | {ratio(dt('ours-dynamic', n), dt('ours', n))} "
            f"| {fmt_ms(dt('latent-ours', n))} | {fmt_ms(dt('latent-dense', n))} | {ratio(dt('latent-dense', n), dt('latent-ours', n))} |"
        )
    lines += [
        "",
        "Decode rows: one new token through the layer over T cached tokens; the stock layer re-expands all T latents "
        "per head (`expand_kv`) every step, ours attends to k latents. The latent kernel columns time the attention "
        "alone over the T + 1 cached latents: our indexer + top-k + sparse attention vs dense absorbed-MLA attention "
        "(the best dense decode on this layout).",
        "",
        "Checks: " + "; ".join(checks) + ".",
        "",
        "**Targets**",
        *targets(args, t, dt, peaks, agreement),
        "",
        f"Benchmark wall time: {wall:.0f} s.",
    ]
    return "\n".join(lines)


def targets(args, t, dt, peaks, agreement) -> list[str]:
    """One line per bar this run can judge: the first wave's (small) and issue 22's (v3.2)."""

    def bar(text: str, value: float, holds: bool) -> str:
        return f"- {text.format(value)} → **{'holds' if holds else 'fails'}**."

    out = []
    big, ctx = max(args.prefill), max(args.decode)
    if args.shape == "small":
        p_o, p_m = peaks.get(("ours", big), {}).get("peak_mib"), peaks.get(("masked-dense", big), {}).get("peak_mib")
        speed = (t("masked-dense", big) or 0) / (t("ours", big) or float("inf"))
        mem = p_o / p_m if p_o and p_m else float("nan")
        out.append(bar(f"Prefill {big // 1024}K: ours {{:.1f}}× faster than masked-dense with {mem:.3f} of its peak memory "
                       "(bar: ≥ 5× and ≤ 0.25)", speed, speed >= 5 and mem <= 0.25))
    for n, need in ((16384, 2.0), (8192, 1.0)):
        if args.shape != "small" and t("ours", n) and t("dense-flash", n):
            speed = t("dense-flash", n) / t("ours", n)
            out.append(bar(f"Prefill {n // 1024}K: ours {{:.2f}}× faster than dense flash SDPA (bar: ≥ {need:g}×)", speed, speed >= need))
    if agreement:
        worst = min((a["same"] + a["ties"]) / a["queries"] for a in agreement.values())
        out.append(bar("Int8 indexer: top-k sets identical to the fp32 indexer's (up to exact ties) on {:.3%} of the queries "
                       "at the worst prefill length (bar: ≥ 99.9%)", worst, worst >= 0.999))
    dec = (dt("dense", ctx) or 0) / (dt("ours", ctx) or float("inf"))
    out.append(bar(f"Decode {ctx // 1024}K: ours {{:.1f}}× faster than the dense decode step through the layer (bar: ≥ 10×); "
                   f"on the latent cache alone, against dense absorbed attention: {ratio(dt('latent-dense', ctx), dt('latent-ours', ctx))}",
                   dec, dec >= 10))
    return out


if __name__ == "__main__":
    main()
