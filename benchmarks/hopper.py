"""Hopper readiness without a Hopper: compile every DSA Triton kernel for sm_90a at DeepSeek-V3.2's
shapes and report what ptxas says of each (registers, spills, stack) and the shared memory Triton
allocates.

    .venv/bin/python -m benchmarks.hopper            # about a minute; writes the "dsa sm_90" section of docs/benchmarks.md
    .venv/bin/python -m benchmarks.hopper --check    # print the table; exit 1 if a kernel spills or exceeds a limit

No GPU is needed: Triton compiles ahead of time for `GPUTarget("cuda", 90, 32)` and ptxas (shipped in
the triton wheel, the one Triton itself calls for sm_90) assembles the PTX. Each kernel gets the
constexprs and warp count its wrapper in `kernels.triton_dsa` would launch it with. Integer
arguments are compiled unspecialised (the JIT may also specialise values divisible by 16, which
can only help); pointers are 16-byte aligned, as torch allocates them.

Must run without TRITON_INTERPRET (the interpreter replaces @triton.jit functions).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from kernels import triton_dsa as K

TARGET = GPUTarget("cuda", 90, 32)
MAX_REGISTERS = 255  # per thread
MAX_SHARED = 232_448  # bytes per block on H100/H200 (227 KiB, opt-in)

# DeepSeek-V3.2: absorbed MLA over a 512-wide latent + 64 rope dims, 128 query heads (64 per
# program, the kernels' cap), 2048 selected tokens; indexer 64 heads x 128 dims.
D_QK, D_V, HEADS, TOPK = 576, 512, 128, 2048
INDEXER_HEADS, INDEXER_DIM = 64, 128
CONTEXT = 131_072  # only the top-k kernel's K_PAD depends on it (through min(topk, T))


@dataclass(frozen=True)
class Case:
    name: str
    kernel: triton.JITFunction
    pointers: dict[str, str]  # argument -> Triton pointer type; other non-constexpr arguments are i32
    floats: tuple[str, ...]
    launch: dict  # the wrapper's launch config: constexprs and num_warps

    @property
    def constexprs(self) -> dict:
        return {k: v for k, v in self.launch.items() if k != "num_warps"}

    @property
    def num_warps(self) -> int:
        return self.launch["num_warps"]


@dataclass(frozen=True)
class Report:
    case: Case
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int

    @property
    def ok(self) -> bool:
        return self.spill_stores == 0 and self.spill_loads == 0 and self.registers <= MAX_REGISTERS and self.shared <= MAX_SHARED


def cases(dtype: str = "bf16") -> list[Case]:
    """Every kernel at V3.2 shapes, configured as its wrapper launches it."""
    attn = K._launch_config(HEADS, 1, D_QK, D_V, shared_kv=True)
    act = f"*{dtype}"
    fwd_ptrs = {"q_ptr": act, "k_ptr": act, "v_ptr": act, "idx_ptr": "*i32", "out_ptr": act, "lse_ptr": "*fp32"}
    bwd_ptrs = {"q_ptr": act, "k_ptr": act, "v_ptr": act, "idx_ptr": "*i32", "do_ptr": act, "lse_ptr": "*fp32",
                "delta_ptr": "*fp32", "dq_ptr": act, "dk_ptr": "*fp32", "dv_ptr": "*fp32"}
    idx_ptrs = {"q_ptr": act, "k_ptr": act, "w_ptr": act, "pos_ptr": "*i32", "kpm_ptr": "*i32"}
    scores = K._indexer_config(INDEXER_HEADS, INDEXER_DIM, causal=True, has_kpm=False)
    # V3.2's top-2048 goes through the scores kernel and torch.topk; the fused kernel serves k up to its cap.
    topk = K._indexer_topk_config(INDEXER_HEADS, INDEXER_DIM, K._FUSED_MAX_K_PAD, CONTEXT, has_kpm=False)
    return [
        Case("sparse attention forward", K._sparse_attn_fwd_kernel, fwd_ptrs, ("scale_log2",), attn),
        *(Case(f"sparse attention backward, {g}", K._sparse_attn_bwd_kernel, bwd_ptrs, ("scale", "scale_log2"), {**attn, "GRAD": g})
          for g in ("dq", "dk", "dv")),
        Case("indexer scores", K._indexer_kernel, {**idx_ptrs, "out_ptr": "*fp32"}, ("scale",), scores),
        Case(f"indexer top-k, fused (k <= {K._FUSED_MAX_K_PAD})", K._indexer_topk_kernel, {**idx_ptrs, "out_ptr": "*i32"}, ("scale",), topk),
    ]


def _ptxas_info(ptx: str) -> dict[str, int]:
    """ptxas -v on the PTX, with the flags Triton passes for sm_90a."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run(
            [get_ptxas(TARGET.arch).path, "-v", "-lineinfo", "--regAllocOptLevel=2", "--gpu-name=sm_90a", src, "-o", src + ".o"],
            capture_output=True, text=True, check=True,
        )
    log = proc.stderr

    def number(pattern: str) -> int:
        match = re.search(pattern, log)
        if match is None:
            raise RuntimeError(f"ptxas -v printed no {pattern!r}:\n{log}")
        return int(match.group(1))

    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
        "stack": number(r"(\d+) bytes stack frame"),
    }


def compile_case(case: Case) -> Report:
    names = case.kernel.arg_names
    signature = {}
    for name in names:
        if name in case.constexprs:
            signature[name] = "constexpr"
        elif name in case.pointers:
            signature[name] = case.pointers[name]
        else:
            signature[name] = "fp32" if name in case.floats else "i32"
    unknown = set(case.constexprs) - set(names)
    if unknown:
        raise ValueError(f"{case.name}: constexprs {sorted(unknown)} are not arguments of {case.kernel.__name__}")
    constexprs = {(names.index(k),): v for k, v in case.constexprs.items()}
    aligned = {(names.index(k),): [["tt.divisibility", 16]] for k in case.pointers}
    compiled = triton.compile(ASTSource(case.kernel, signature, constexprs, aligned), target=TARGET,
                              options={"num_warps": case.num_warps})
    return Report(case, shared=compiled.metadata.shared, **_ptxas_info(compiled.asm["ptx"]))


def table(reports: list[Report]) -> str:
    rows = ["| kernel | constexprs | warps | registers | spill stores / loads (B) | stack (B) | shared memory (B) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in reports:
        consts = ", ".join(f"{k}={v}" for k, v in r.case.constexprs.items())
        rows.append(f"| {r.case.name} | {consts} | {r.case.num_warps} | {r.registers} | {r.spill_stores} / {r.spill_loads} "
                    f"| {r.stack} | {r.shared:,} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="print the table only; exit 1 if a kernel spills or exceeds a limit")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET"):
        sys.exit("benchmarks.hopper: unset TRITON_INTERPRET (the interpreter cannot compile for a GPU)")
    todo = cases()
    kernels = {name for name, f in vars(K).items() if isinstance(f, triton.JITFunction) and name.endswith("_kernel")}
    missing = kernels - {c.kernel.__name__ for c in todo}
    if missing:
        sys.exit(f"benchmarks.hopper: no case compiles {', '.join(sorted(missing))}")
    reports = [compile_case(c) for c in todo]
    text = table(reports)
    print(text)
    bad = [r.case.name for r in reports if not r.ok]
    if args.check:
        if bad:
            sys.exit(f"spills or over the limits ({MAX_REGISTERS} registers, {MAX_SHARED:,} B shared): {', '.join(bad)}")
        return
    from benchmarks.record import write_section

    write_section("dsa sm_90", f"""## DSA Triton kernels compiled for Hopper (sm_90a, no GPU)

`.venv/bin/python -m benchmarks.hopper`: every kernel compiled ahead of time for sm_90a at DeepSeek-V3.2's
shapes (absorbed MLA: q . k over {D_QK} = {D_V} + {D_QK - D_V} dims, values the latent's first {D_V}, {HEADS} heads,
top-{TOPK}; indexer {INDEXER_HEADS} heads x {INDEXER_DIM}, bf16), with the constexprs and warps its wrapper launches
it with; registers, spills and stack from ptxas -v, shared memory as Triton allocates it (limits: {MAX_REGISTERS}
registers a thread, {MAX_SHARED:,} B a block).

{text}

{"Every kernel fits without spilling." if not bad else "Spilling or over a limit: " + ", ".join(bad) + "."}""")


if __name__ == "__main__":
    main()
