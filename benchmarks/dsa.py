"""DeepSeek Sparse Attention on CPU: our kernels vs transformers' masked-dense DSA vs dense attention.

    .venv/bin/python -m benchmarks.dsa            # ~7.5 minutes on 2 shared cores; writes docs/benchmarks.md

One DeepseekV32Attention layer (fp32, seed-0 random weights, the same weights for every contender), shape in
SHAPE. Times are medians of interleaved repeats, all taken in this one process; the peak memory of each
prefill case is measured in a fresh subprocess (peak RSS during the forward minus the RSS before it, with
the high-water mark reset through /proc/self/clear_refs). Writes the "dsa cpu" section of
docs/benchmarks.md and prints it.

Prefill contenders (batch 1, causal, k = 256):
    ours          the layer with attn_implementation="dsa_sparse" (kernels.attention -> kernels.reference):
                  transformers' indexer, then our sparse attention over the per-head expanded K/V.
    ours-abs      the same weights, forward written here around kernels.reference: the reference indexer
                  (query-chunked, causally trimmed) + topk_indices, then sparse_attention in absorbed-MLA form
                  (one shared latent as K for all heads, its first kv_lora_rank columns as V).
    masked-dense  the layer with attn_implementation="sdpa", index_topk = 256: the top-k is scattered into an
                  L x L mask and SDPA runs dense over it.
    dense         the layer with attn_implementation="sdpa", index_topk >= L (every causal key kept; the
                  indexer and a full-width top-k still run).
    dense-flash   extra reference: the layer's projections + causal SDPA, no indexer, no mask; V zero-padded
                  to the QK width so CPU SDPA takes its flash kernel.

Decode contenders: see `decode_cases`.

Threads: 1 by default (--threads). On this 2-core machine other jobs run alongside; with 2 OpenMP threads
every parallel region waits on a descheduled thread, which inflated the many-small-op sparse paths 10-30x
in trial runs while barely touching the few-big-GEMM dense ones, so ratios measured that way are noise.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
SHAPE = dict(
    hidden_size=512, num_attention_heads=8, num_key_value_heads=8, q_lora_rank=128, kv_lora_rank=128,
    qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, index_n_heads=4, index_head_dim=64, index_topk=256,
    num_hidden_layers=1,
)
TOPK = 256
PREFILL_L = (1024, 4096, 8192, 16384)
ANCHOR_L = (8192,)  # run without the slow stock `ours`: only to anchor the extrapolation to 16K
DECODE_T = (4096, 16384, 65536)
PREFILL_CASES = ("ours", "ours-abs", "masked-dense", "dense", "dense-flash")
LAYER_CASES = ("ours", "masked-dense", "dense")
MEM_CAP_GIB = 18.0  # a forward predicted (or found) to need more than this is skipped
SPARSE_CHUNK = 16  # queries per sparse_attention chunk in ours-abs (gathered latents stay cache-resident)
INDEXER_CHUNK = 128  # queries per reference-indexer chunk in ours-abs: [128, T] scores, never [L, L]

# Per-forward phase record: seconds in the indexer etc., and (in memory subprocesses) per-phase peaks.
PHASE: dict[str, float] = {}
MEMTRACK: dict[str, float] = {}


# ----------------------------------------------------------------------------------------------- setup

def build():
    """(layer, rope, config): one DeepseekV32Attention with seed-0 weights, fp32, eval, indexer instrumented."""
    from transformers import DeepseekV32Config
    from transformers.models.deepseek_v32.modeling_deepseek_v32 import DeepseekV32Attention, DeepseekV32RotaryEmbedding

    from kernels.attention import register

    register()
    config = DeepseekV32Config(**SHAPE, max_position_embeddings=max(DECODE_T) + 1)
    config._attn_implementation = "dsa_sparse"
    torch.manual_seed(0)
    layer = DeepseekV32Attention(config, layer_idx=0).eval()
    layer.indexer.register_forward_pre_hook(lambda mod, args: PHASE.__setitem__("_t", time.perf_counter()))
    layer.indexer.register_forward_hook(_indexer_done)
    return layer, DeepseekV32RotaryEmbedding(config), config


def _indexer_done(mod, args, out) -> None:
    PHASE["indexer"] = PHASE.get("indexer", 0.0) + time.perf_counter() - PHASE.pop("_t")
    if MEMTRACK:  # memory subprocess: peak of the indexer phase, then restart the high-water mark
        PHASE["indexer_peak"] = _status_mib("VmHWM") - MEMTRACK["before"]
        Path("/proc/self/clear_refs").write_text("5")


def prefill_inputs(rope, length: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, length, SHAPE["hidden_size"], generator=gen)
    pos = torch.arange(length)[None]
    mask = torch.ones(length, length, dtype=torch.bool).tril()[None, None]  # [1, 1, L, L] causal, True = attend
    return x, rope(x, pos), mask, pos


def project(layer, x, cos, sin):
    """The layer's own projections, in the forms our kernels take.

    Returns dict: q_abs [B,S,H,Dc+Dr] (q_nope absorbed through W_UK, then q_rot), latent [B,S,Dc+Dr]
    (normalised kv latent, then roped k_rot), q [B,S,H,Dqk] (the layer's expanded query), iq [B,S,HI,DI],
    ik [B,S,DI], w [B,S,HI] (indexer queries, keys and head weights, transformers' head scaling folded into w).
    """
    from transformers.models.deepseek_v32.modeling_deepseek_v32 import apply_rotary_pos_emb, apply_rotary_pos_emb_interleave

    a, ix = layer, layer.indexer
    bsz, seq, _ = x.shape
    heads, d_nope, d_rope, d_c = a.num_heads, a.qk_nope_head_dim, a.qk_rope_head_dim, a.kv_lora_rank
    q_resid = a.q_a_layernorm(a.q_a_proj(x))
    q = a.q_b_proj(q_resid).view(bsz, seq, heads, a.qk_head_dim)
    q_nope, q_rot = q.split([d_nope, d_rope], dim=-1)
    kv_pass, k_rot = a.kv_a_proj_with_mqa(x).split([d_c, d_rope], dim=-1)
    kv_pass = a.kv_a_layernorm(kv_pass)
    q_rot, k_rot = apply_rotary_pos_emb_interleave(q_rot, k_rot[:, :, None], cos, sin, unsqueeze_dim=2)
    w_b = a.kv_b_proj.weight.view(heads, d_nope + a.v_head_dim, d_c)
    q_abs = torch.cat([torch.einsum("bshd,hdc->bshc", q_nope, w_b[:, :d_nope]), q_rot], dim=-1)
    latent = torch.cat([kv_pass, k_rot[:, :, 0]], dim=-1)

    iq = ix.wq_b(q_resid).view(bsz, seq, ix.n_heads, ix.head_dim)
    ik = ix.k_norm(ix.wk(x))[:, :, None]
    iq_rot, iq_pass = iq.split([ix.qk_rope_head_dim, ix.head_dim - ix.qk_rope_head_dim], dim=-1)
    ik_rot, ik_pass = ik.split([ix.qk_rope_head_dim, ix.head_dim - ix.qk_rope_head_dim], dim=-1)
    iq_rot, ik_rot = apply_rotary_pos_emb(iq_rot, ik_rot, cos, sin, unsqueeze_dim=2)
    return dict(
        q_abs=q_abs, latent=latent, q=torch.cat([q_nope, q_rot], dim=-1),
        iq=torch.cat([iq_rot, iq_pass], dim=-1), ik=torch.cat([ik_rot, ik_pass], dim=-1)[:, :, 0],
        w=ix.weights_proj(x) * ix.n_heads**-0.5, iscale=ix.softmax_scale,
    )


def epilogue(layer, out_latent):
    """[B,S,H,Dc] attention output in latent space -> W_UV per head -> o_proj."""
    heads, d_nope, d_c = layer.num_heads, layer.qk_nope_head_dim, layer.kv_lora_rank
    w_uv = layer.kv_b_proj.weight.view(heads, d_nope + layer.v_head_dim, d_c)[:, d_nope:]
    return layer.o_proj(torch.einsum("bshc,hvc->bshv", out_latent, w_uv).flatten(2))


def ref_indexer_topk(p, q_offset: int = 0, chunk: int = INDEXER_CHUNK):
    """kernels.reference indexer + topk_indices, query-chunked, causally trimmed: [B, S, TOPK] int32, -1 = empty."""
    from kernels import reference

    iq, ik, w = p["iq"], p["ik"], p["w"]
    seq, kv_len = iq.shape[1], ik.shape[1]
    out = []
    for s0 in range(0, seq, chunk):
        s1 = min(seq, s0 + chunk)
        keys = min(kv_len, q_offset + s1)  # keys after the chunk's last query are causally masked anyway
        scores = reference.indexer_scores(iq[:, s0:s1], ik[:, :keys], w[:, s0:s1], q_positions=q_offset + s0, scale=p["iscale"])
        out.append(reference.topk_indices(scores, TOPK))
    return torch.cat(out, dim=1)


# ------------------------------------------------------------------------------------- prefill cases

def run_prefill(case: str, layer, inputs):
    """One forward of `case`; PHASE holds its phase seconds afterwards."""
    from kernels import reference

    PHASE.clear()
    x, (cos, sin), mask, pos = inputs
    length = x.shape[1]
    if case in LAYER_CASES:
        layer.config._attn_implementation = "dsa_sparse" if case == "ours" else "sdpa"
        layer.indexer.index_topk = length if case == "dense" else TOPK
        try:
            return layer(x, (cos, sin), mask, position_ids=pos)[0]
        finally:
            layer.config._attn_implementation, layer.indexer.index_topk = "dsa_sparse", TOPK
    p = project(layer, x, cos, sin)
    if case == "ours-abs":
        started = time.perf_counter()
        idx = ref_indexer_topk(p)
        PHASE["indexer"] = time.perf_counter() - started
        _mem_phase("indexer_peak")
        started = time.perf_counter()
        d_c = layer.kv_lora_rank
        out_lat = reference.sparse_attention(p["q_abs"], p["latent"], p["latent"][..., :d_c], idx, layer.scaling, chunk_size=SPARSE_CHUNK)
        PHASE["sparse"] = time.perf_counter() - started
        return epilogue(layer, out_lat)
    if case == "dense-flash":
        d_c = layer.kv_lora_rank
        key_states, value_states = layer.expand_kv(p["latent"][:, None, :, :d_c], p["latent"][:, None, :, d_c:])
        q = p["q"].transpose(1, 2)
        v = F.pad(value_states, (0, q.shape[-1] - value_states.shape[-1]))
        out = F.scaled_dot_product_attention(q, key_states, v, is_causal=True, scale=layer.scaling)
        return layer.o_proj(out[..., : layer.v_head_dim].transpose(1, 2).flatten(2))
    raise ValueError(case)


# -------------------------------------------------------------------------------------- decode cases

def decode_setup(layer, rope, ctx: int, seed: int = 2):
    """Cache-shaped tensors for T = ctx context tokens plus the new token at position ctx."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, ctx + 1, SHAPE["hidden_size"], generator=gen)
    pos = torch.arange(ctx + 1)[None]
    cos, sin = rope(x, pos)
    p = project(layer, x, cos, sin)
    d_c = layer.kv_lora_rank
    latent = p["latent"]
    key_states, value_states = layer.expand_kv(latent[:, None, :, :d_c], latent[:, None, :, d_c:])
    return dict(
        x_new=x[:, ctx:], pe_new=(cos[:, ctx:], sin[:, ctx:]), pos_new=pos[:, ctx:], ctx=ctx,
        # the layer's cache content for the T context tokens: normalised latent (k_pass), roped k_rot, indexer keys
        k_pass=latent[:, None, :ctx, :d_c].contiguous(), k_rot=latent[:, None, :ctx, d_c:].contiguous(),
        ik_ctx=p["ik"][:, :ctx].contiguous(),
        # kernel-only tensors over all T + 1 keys (the context plus the new token)
        q_abs=p["q_abs"][:, ctx:], latent=latent, q=p["q"][:, ctx:],
        key=key_states, value=value_states,  # [1, H, T+1, D], the layout transformers hands attention
        p_new=dict(iq=p["iq"][:, ctx:], ik=p["ik"], w=p["w"][:, ctx:], iscale=p["iscale"]),
    )


def fresh_cache(config, d):
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    cache.update(d["k_pass"], d["k_rot"], 0)
    cache.update_indexer(d["ik_ctx"], 0)
    return cache


def decode_cases():
    """(group, role) -> fn(layer, config, d); role is ours / masked-dense / dense."""
    from kernels import reference

    def layer_step(impl, topk):
        def fn(layer, config, d):
            cache = d.pop("_cache")
            layer.config._attn_implementation, layer.indexer.index_topk = impl, topk
            mask = torch.ones(1, 1, 1, d["ctx"] + 1, dtype=torch.bool)
            try:
                return layer(d["x_new"], d["pe_new"], mask, past_key_values=cache, position_ids=d["pos_new"])[0]
            finally:
                layer.config._attn_implementation, layer.indexer.index_topk = "dsa_sparse", TOPK
        return fn

    def latent_ours(layer, config, d):
        idx = ref_indexer_topk(d["p_new"], q_offset=d["ctx"])
        lat = d["latent"]
        return reference.sparse_attention(d["q_abs"], lat, lat[..., : layer.kv_lora_rank], idx, layer.scaling)

    def latent_dense(layer, config, d):
        lat = d["latent"][0]  # [T+1, Dc+Dr]
        scores = torch.einsum("shc,tc->sht", d["q_abs"][0], lat) * layer.scaling
        return torch.einsum("sht,tc->shc", scores.softmax(-1), lat[:, : layer.kv_lora_rank])[None]

    def expanded_ours(layer, config, d):
        idx = ref_indexer_topk(d["p_new"], q_offset=d["ctx"])
        return reference.sparse_attention(d["q"], d["key"].transpose(1, 2), d["value"].transpose(1, 2), idx, layer.scaling)

    def expanded_dense(layer, config, d):
        return F.scaled_dot_product_attention(d["q"].transpose(1, 2), d["key"], d["value"], scale=layer.scaling)

    return {
        ("layer", "ours"): layer_step("dsa_sparse", TOPK),
        ("layer", "masked-dense"): layer_step("sdpa", TOPK),
        ("layer", "dense"): layer_step("sdpa", 1 << 30),
        ("latent", "ours"): latent_ours,
        ("latent", "dense"): latent_dense,
        ("expanded", "ours"): expanded_ours,
        ("expanded", "dense"): expanded_dense,
    }


# ------------------------------------------------------------------------------------------- memory

def _status_mib(key: str) -> float:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) / 1024


def _mem_available_gib() -> float:
    return int(re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M).group(1)) / 2**20


def _mem_phase(key: str) -> None:
    if MEMTRACK:
        PHASE[key] = _status_mib("VmHWM") - MEMTRACK["before"]
        Path("/proc/self/clear_refs").write_text("5")


class MemCap:
    """Soft RLIMIT_AS at (current address space + cap): an allocation past it raises instead of OOM-killing."""

    def __init__(self, cap_gib: float):
        self.cap = int(cap_gib * 2**30)

    def __enter__(self):
        self.old = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (int(_status_mib("VmSize") * 2**20) + self.cap, self.old[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_AS, self.old)


def peak_of(fn) -> float:
    """Peak MiB above the RSS before fn (max over its phases; VmHWM is reset via /proc/self/clear_refs)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (and ru_maxrss) to the current RSS
    MEMTRACK["before"] = _status_mib("VmRSS")
    fn()
    PHASE["rest_peak"] = _status_mib("VmHWM") - MEMTRACK["before"]
    return max(v for k, v in PHASE.items() if k.endswith("_peak"))


def child(spec: str) -> None:
    """Subprocess entry: one prefill case's forward peak memory, printed as one JSON line."""
    case, length = spec.split(":")
    if case == "calibrate":  # a known 1 GiB allocation checks the method
        print(json.dumps({"peak_mib": peak_of(lambda: torch.ones(2**28))}))
        return
    layer, rope, _ = build()
    with torch.no_grad():
        run_prefill(case, layer, prefill_inputs(rope, 128))  # lazily initialised kernels / pools
        inputs = prefill_inputs(rope, int(length))
        try:
            with MemCap(MEM_CAP_GIB):
                peak = peak_of(lambda: run_prefill(case, layer, inputs))
        except (RuntimeError, MemoryError) as err:
            print(json.dumps({"oom": str(err)[:200]}))
            return
    print(json.dumps({"peak_mib": peak, **{k: v for k, v in PHASE.items() if not k.startswith("_")}}))


def measure_in_child(spec: str, threads: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.dsa", "--threads", str(threads), "--child", spec]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"oom": f"child exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    return json.loads(lines[-1])


def fit_quadratic(points: dict[int, float], length: int) -> float:
    """Extrapolate y(L) from the two largest measured lengths below `length`.

    y = a*L + b*L^2 through both points; if that needs a < 0 (growth faster than quadratic, e.g. from cache
    or memory pressure), the pure quadratic through the larger point instead, which predicts less.
    """
    (l1, y1), (l2, y2) = sorted((l, y) for l, y in points.items() if l < length)[-2:]
    x1, x2, x = l1 / 1024, l2 / 1024, length / 1024
    b = (y2 / x2 - y1 / x1) / (x2 - x1)
    a = y1 / x1 - b * x1
    if a < 0 or b < 0:
        return y2 * (x / x2) ** 2 if b >= 0 else y2 * x / x2
    return a * x + b * x * x


# ---------------------------------------------------------------------------------------------- main

def med(xs):
    return statistics.median(xs) if xs else None


def fmt_ms(secs) -> str:
    if secs is None:
        return "—"
    ms = secs * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


def fmt_ratio(num, den) -> str:
    return "—" if not num or not den else f"{num / den:.2f}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prefill", type=int, nargs="*", default=list(PREFILL_L))
    parser.add_argument("--decode", type=int, nargs="*", default=list(DECODE_T))
    parser.add_argument("--no-write", action="store_true", help="print the section, don't write docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if args.child:
        child(args.child)
        return
    wall0 = time.monotonic()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    layer, rope, config = build()
    lengths = sorted(args.prefill)

    # ---- peak memory: one fresh subprocess per (case, L); the largest L only if predicted to fit
    calib = measure_in_child("calibrate:0", args.threads)
    log(f"calibration: a 1024 MiB tensor reads as {calib.get('peak_mib', float('nan')):.0f} MiB")
    mem: dict[tuple[str, int], dict] = {}
    skip: dict[tuple[str, int], str] = {}
    notes: list[str] = []
    for length in lengths:
        for case in PREFILL_CASES:
            if case == "ours" and length in ANCHOR_L:
                continue
            measured = {l: mem[(case, l)]["peak_mib"] for l in lengths if l < length and "peak_mib" in mem.get((case, l), {})}
            if len(measured) >= 2:
                need = fit_quadratic(measured, length) / 1024
                avail = _mem_available_gib()
                if need > MEM_CAP_GIB or need > avail - 2:
                    skip[(case, length)] = f"OOM-skipped (needs ≈{need:.1f} GiB)"
                    notes.append(f"{case} at {length // 1024}K not run: its forward needs ≈{need:.1f} GiB (fitted to its "
                                 f"measured peaks), over the {MEM_CAP_GIB:.0f} GiB cap or the "
                                 f"{avail:.1f} GiB then available")
                    log(f"mem {case} L={length}: skipped, needs {need:.1f} GiB")
                    continue
            mem[(case, length)] = measure_in_child(f"{case}:{length}", args.threads)
            log(f"mem {case} L={length}: {mem[(case, length)]}")
            if "oom" in mem[(case, length)]:
                skip[(case, length)] = "OOM-skipped (allocation failed)"
                notes.append(f"{case} at {length // 1024}K: allocation failed under the {MEM_CAP_GIB:.0f} GiB cap")

    # ---- prefill timing: interleaved, this process
    times: dict[tuple[str, int], list[float]] = {}
    phases: dict[tuple[str, int], list[dict]] = {}
    checks: list[str] = []
    warm = prefill_inputs(rope, 128)
    for case in PREFILL_CASES:
        run_prefill(case, layer, warm)
    for length in lengths:
        inputs = prefill_inputs(rope, length)
        # the slow layer cases get fewer repeats at long L, to keep the whole run under ~10 minutes
        reps = {c: 3 if length <= 1024 or c not in LAYER_CASES else 2 if length <= 4096 else 1 for c in PREFILL_CASES}
        if length in ANCHOR_L:
            reps["ours"] = 0
        outputs = {}
        for rep in range(max(reps.values())):
            for case in PREFILL_CASES:
                if rep >= reps[case] or (case, length) in skip:
                    continue
                try:
                    with MemCap(MEM_CAP_GIB):
                        started = time.perf_counter()
                        out = run_prefill(case, layer, inputs)
                        elapsed = time.perf_counter() - started
                except (RuntimeError, MemoryError) as err:
                    skip[(case, length)] = "OOM-skipped (allocation failed)"
                    notes.append(f"{case} at {length // 1024}K: timing run failed under the cap ({str(err)[:80]})")
                    continue
                times.setdefault((case, length), []).append(elapsed)
                phases.setdefault((case, length), []).append(dict(PHASE))
                if length == lengths[0] and rep == 0:
                    outputs[case] = out
                del out
                log(f"prefill {case} L={length} rep {rep}: {elapsed * 1e3:.0f} ms")
        if outputs:
            checks += output_checks(layer, inputs, outputs)
            log("checks: " + "; ".join(checks))
        del inputs, outputs
        gc.collect()

    # ---- decode timing: interleaved, this process
    cases = decode_cases()
    dtimes: dict[tuple[tuple[str, str], int], list[float]] = {}
    expand: dict[int, list[float]] = {}
    small = decode_setup(layer, rope, 300)
    for fn in cases.values():  # warm-up
        small["_cache"] = fresh_cache(config, small)
        fn(layer, config, small)
    for ctx in sorted(args.decode):
        d = decode_setup(layer, rope, ctx)
        for rep in range(5):
            for key, fn in cases.items():
                if key[0] == "layer" and rep >= 3:
                    continue
                d["_cache"] = fresh_cache(config, d)
                started = time.perf_counter()
                fn(layer, config, d)
                dtimes.setdefault((key, ctx), []).append(time.perf_counter() - started)
            if rep < 3:
                started = time.perf_counter()
                layer.expand_kv(d["k_pass"], d["k_rot"])
                expand.setdefault(ctx, []).append(time.perf_counter() - started)
        log(f"decode T={ctx}: " + ", ".join(f"{'/'.join(k)} {fmt_ms(med(dtimes[(k, ctx)]))} ms" for k in cases))
        if ctx == max(args.decode):  # the layer path and the kernel-only latent path select the same tokens
            d["_cache"] = fresh_cache(config, d)
            lay = cases[("layer", "ours")](layer, config, d)
            lat = epilogue(layer, cases[("latent", "ours")](layer, config, d))
            checks.append(f"decode T={ctx // 1024}K: layer ours vs latent ours-abs (+ W_UV, o_proj) max |Δ| {(lay - lat).abs().max():.1e}")
        del d
        gc.collect()

    wall = time.monotonic() - wall0
    body = render(args, calib, mem, skip, notes, times, phases, dtimes, expand, checks, wall)
    if not args.no_write:
        from benchmarks.record import write_section

        write_section("dsa cpu", body)
    print(body)


def output_checks(layer, inputs, outputs) -> list[str]:
    """Agreement between contenders at the smallest L (top-k ties are broken differently by the two indexers)."""
    from kernels import reference

    x, (cos, sin), mask, pos = inputs
    length = x.shape[1]
    res = [f"L={length // 1024}K, mean |output| {outputs['ours'].abs().mean():.1e}"]
    res.append(f"ours vs masked-dense max |Δ| {(outputs['ours'] - outputs['masked-dense']).abs().max():.1e}")
    res.append(f"dense-flash vs dense {(outputs['dense-flash'] - outputs['dense']).abs().max():.1e}")
    q_resid = layer.q_a_layernorm(layer.q_a_proj(x))
    hf = reference.mask_indices(layer.indexer(x, q_resid, (cos, sin), mask[:, 0], pos), length).sort(-1).values
    ref = ref_indexer_topk(project(layer, x, cos, sin)).sort(-1).values
    same = (hf == ref).all(-1)[0]
    diff = (outputs["ours-abs"] - outputs["ours"]).abs()[0]
    res.append(
        f"ours-abs vs ours: {int((~same).sum())}/{length} queries select a different top-k set (exact score ties, "
        f"mostly relu-zero scores, broken differently), max |Δ| {diff[same].max():.1e} over the other queries"
    )
    return res


# -------------------------------------------------------------------------------------------- report

def render(args, calib, mem, skip, notes, times, phases, dtimes, expand, checks, wall) -> str:
    lengths, ctxs = sorted(args.prefill), sorted(args.decode)
    t = lambda c, l: med(times.get((c, l)))  # noqa: E731
    extrap = {}  # (case, L) -> seconds, for skipped cells, fitted on the measured smaller L
    for case in LAYER_CASES:
        for length in lengths:
            pts = {l: t(case, l) for l in lengths if l < length and t(case, l)}
            if t(case, length) is None and len(pts) >= 2 and length not in ANCHOR_L:
                extrap[(case, length)] = fit_quadratic(pts, length)

    def ms(case, length):
        if t(case, length) is not None:
            n = len(times[(case, length)])
            return fmt_ms(t(case, length)) + ("" if n == 3 else f" (n={n})")
        if (case, length) in extrap:
            return f"{skip.get((case, length), 'not run')}; ≈{fmt_ms(extrap[(case, length)])} extrapolated"
        if case == "ours" and length in ANCHOR_L:
            return "not run (anchor L)"
        return skip.get((case, length), "—")

    def tt(case, length):
        return t(case, length) or extrap.get((case, length))

    def ratio(num_case, den_case, length):
        r = fmt_ratio(tt(num_case, length), t(den_case, length))
        return r + ("*" if r != "—" and t(num_case, length) is None else "")

    def peak(case, length):
        m = mem.get((case, length), {})
        if "peak_mib" in m:
            return f"{m['peak_mib']:,.0f}"
        if case == "ours" and length in ANCHOR_L:
            return "not run"
        return skip.get((case, length), "—")

    shape = ", ".join(f"{k} {v}" for k, v in SHAPE.items() if k != "num_hidden_layers")
    lines = [
        "## DeepSeek Sparse Attention on CPU (one layer, fp32)",
        "",
        "Command: `.venv/bin/python -m benchmarks.dsa`",
        "",
        f"Shape: `DeepseekV32Config` with {shape}; one `DeepseekV32Attention` layer, seed-0 random weights shared by "
        f"every contender, batch 1, k = {TOPK}, torch {torch.__version__}, {args.threads} thread(s) (other jobs share "
        "the 2 cores; with 2 OpenMP threads the many-small-op sparse paths stall on descheduled threads). "
        "Times: median of interleaved repeats in one process, n = 3 unless noted. Peak: MiB above the RSS before the "
        "forward, one fresh subprocess per cell, high-water mark reset via `/proc/self/clear_refs` "
        f"(check: a 1024 MiB tensor reads as {calib.get('peak_mib', float('nan')):.0f}); cases predicted to need more "
        f"than {MEM_CAP_GIB:.0f} GiB are not run.",
        "",
        "Contenders: **ours** = the layer with `attn_implementation=\"dsa_sparse\"` (transformers' indexer, then "
        "`kernels.reference.sparse_attention` over the per-head expanded K/V transformers hands it); **ours-abs** = the "
        "same weights with our kernels called by this benchmark in absorbed-MLA form (`kernels.reference` indexer "
        f"chunked over {INDEXER_CHUNK} queries and causally trimmed, `topk_indices`, then `sparse_attention` on the "
        f"shared 160-wide latent, chunk {SPARSE_CHUNK}); **masked-dense** = the layer with `sdpa`, top-k scattered into "
        "an L×L mask; **dense** = `sdpa` with index_topk ≥ L (the indexer and a full-width top-k still run); "
        "**dense-flash** (extra) = the layer's projections + causal SDPA, no indexer, V zero-padded so CPU SDPA takes its "
        "flash kernel. transformers' `sdpa` paths land on the CPU *math* kernel (V width 64 ≠ QK width 96), which "
        "materialises H×L×L fp32 scores and their softmax.",
        "",
        "| case | L or T | ours ms | masked-dense ms | dense ms | masked-dense / ours | dense / ours | peak MiB ours | peak MiB masked-dense | peak MiB dense |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, ours in (("prefill, ours = layer `dsa_sparse`", "ours"), ("prefill, ours = ours-abs", "ours-abs")):
        for length in lengths:
            lines.append(
                f"| {label} | {length // 1024}K | {ms(ours, length)} | {ms('masked-dense', length)} | {ms('dense', length)} "
                f"| {ratio('masked-dense', ours, length)} | {ratio('dense', ours, length)} | {peak(ours, length)} "
                f"| {peak('masked-dense', length)} | {peak('dense', length)} |"
            )
    dt = lambda g, r, c: med(dtimes.get(((g, r), c)))  # noqa: E731
    for group, label in (("layer", "decode, through the layer + cache"), ("latent", "decode, kernels on the latent cache"),
                         ("expanded", "decode, kernels on expanded K/V")):
        for ctx in ctxs:
            lines.append(
                f"| {label} | {ctx // 1024}K | {fmt_ms(dt(group, 'ours', ctx))} | {fmt_ms(dt(group, 'masked-dense', ctx))} "
                f"| {fmt_ms(dt(group, 'dense', ctx))} | {fmt_ratio(dt(group, 'masked-dense', ctx), dt(group, 'ours', ctx))} "
                f"| {fmt_ratio(dt(group, 'dense', ctx), dt(group, 'ours', ctx))} | — | — | — |"
            )
    if extrap:
        lines += ["", "`*` ratio against a time extrapolated, not measured: a·L + b·L² through the two largest measured "
                  "L, or, where that needs a < 0 (faster-than-quadratic growth), the smaller pure-quadratic b·L² through "
                  "the largest. Memory requirements of skipped cells use the same fit on the measured peaks."]
    if notes:
        lines += ["", "Not run: " + "; ".join(notes) + "."]

    lines += [
        "",
        "Decode rows: *through the layer* = one `DeepseekV32Attention` step with a `DynamicCache` pre-filled with T "
        "tokens (latents + indexer keys); every contender there re-expands all T cached latents with `kv_b_proj` "
        f"(`expand_kv` alone: {', '.join(f'{c // 1024}K {fmt_ms(med(expand[c]))} ms' for c in ctxs if c in expand)}). "
        "*Kernels on the latent cache* = ours-abs (reference indexer over the T+1 indexer keys, top-k, `sparse_attention` on "
        "the shared latent) vs dense absorbed-MLA attention over the same latent cache. *Kernels on expanded K/V* = the "
        "reference indexer + `sparse_attention` vs SDPA, both over the per-head [1, 8, T+1, 96/64] K/V that transformers "
        "hands attention (the expansion itself not timed). Projections and o_proj are excluded from the kernel-only rows. "
        "n = 3 (layer rows) / 5.",
        "",
        "Where the time and memory go (prefill, medians):",
        "",
        "| L | ours: indexer ms | ours: rest ms (mostly `sparse_attention`) | ours-abs: indexer ms | ours-abs: `sparse_attention` ms "
        "| masked-dense: indexer ms | dense-flash ms | dense-flash / ours-abs | peak MiB ours: indexer phase / rest | peak MiB ours-abs | peak MiB dense-flash |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ph(case, length, key):
        vals = [p[key] for p in phases.get((case, length), []) if key in p]
        return med(vals)

    for length in lengths:
        rest = None if t("ours", length) is None else t("ours", length) - (ph("ours", length, "indexer") or 0)
        m = mem.get(("ours", length), {})
        split = f"{m['indexer_peak']:,.0f} / {m['rest_peak']:,.0f}" if "indexer_peak" in m else "—"
        lines.append(
            f"| {length // 1024}K | {fmt_ms(ph('ours', length, 'indexer'))} | {fmt_ms(rest)} | {fmt_ms(ph('ours-abs', length, 'indexer'))} "
            f"| {fmt_ms(ph('ours-abs', length, 'sparse'))} | {fmt_ms(ph('masked-dense', length, 'indexer'))} | {ms('dense-flash', length)} "
            f"| {fmt_ratio(t('dense-flash', length), t('ours-abs', length))} "
            f"| {split} | {peak('ours-abs', length)} | {peak('dense-flash', length)} |"
        )
    lines += ["", "Checks: " + "; ".join(checks) + "."]
    lines += ["", verdict(lengths, ctxs, mem, skip, t, tt, extrap, dt), "", f"Benchmark wall time: {wall:.0f} s."]
    return "\n".join(lines)


def verdict(lengths, ctxs, mem, skip, t, tt, extrap, dt) -> str:
    big, ctx = lengths[-1], ctxs[-1]
    m_md = mem.get(("masked-dense", big), {}).get("peak_mib")
    need = None
    if m_md is None and ("masked-dense", big) in skip:
        need_txt = skip[("masked-dense", big)]
        match = re.search(r"≈([\d.]+) GiB", need_txt)
        need = float(match.group(1)) * 1024 if match else None
    out = ["**Targets**"]
    parts = []
    for ours in ("ours", "ours-abs"):
        if t(ours, big) is None or tt("masked-dense", big) is None:
            parts.append(f"{ours}: not measurable")
            continue
        r = tt("masked-dense", big) / t(ours, big)
        peak_o = mem.get((ours, big), {}).get("peak_mib")
        ref = m_md if m_md is not None else need
        mr = peak_o / ref if (peak_o and ref) else float("nan")
        how = "" if m_md is not None else " (masked-dense time extrapolated, its memory the predicted requirement)"
        ok = r >= 5 and mr <= 0.25
        parts.append(f"{ours}: {r:.1f}× faster, {mr:.3f} of masked-dense's peak{how} → **{'holds' if ok else 'fails'}**")
    out.append(f"- Prefill {big // 1024}K, ours ≥ 5× faster than masked-dense with ≤ 1/4 of its peak memory: " + "; ".join(parts) + ".")
    parts = []
    for group, label in (("layer", "through the layer"), ("latent", "kernels on the latent cache"), ("expanded", "kernels on expanded K/V")):
        o, dn = dt(group, "ours", ctx), dt(group, "dense", ctx)
        if o and dn:
            parts.append(f"{label} {dn / o:.1f}× → **{'holds' if dn / o >= 10 else 'fails'}**")
    out.append(f"- Decode {ctx // 1024}K, ours ≥ 10× faster than the dense decode step: " + "; ".join(parts) + ".")
    return "\n".join(out)


if __name__ == "__main__":
    main()
