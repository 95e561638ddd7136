"""Generation throughput: the native engine vs transformers' model.generate (and vLLM on a dense model); peak memory of streaming.

    .venv/bin/python -m benchmarks.generate      # ~10 minutes on 2 cores; writes the "generate" section of docs/benchmarks.md

Throughput: one tiny DeepseekV32 (ModelConfig defaults: hidden 128, 3 layers, index_topk 48; max positions
1280; seed-0 random weights), 256 prompts of 16..1000 tokens (uniform, seed 0) cut from task text, 128 new
tokens each with EOS ignored (`ignore_eos`: every sequence runs all 128), temperature 0.8, top-p 0.95.
The native engine (64 and 256 sequences running) and the `hf` backend (model.generate on left-padded
batches of 64 and 256, our dsa_sparse attention) run the same requests in this one process, one after
the other; the ratio is against the fastest model.generate row. The vLLM row uses a dense Llama of the
same width (vLLM does not run our DSA model) against model.generate on that model, batch 64.

Memory: the streaming generate path (`generation.streaming.generate_shards` into shards, then the merge into
one dataset) in a fresh process per size, prompts read lazily from a Parquet file; peak RSS is the
process's high-water mark (VmHWM), shown with the RSS after loading the model beside it.

One OpenMP thread (torch.set_num_threads(1)) throughout: the machine is shared with other work, and a
second thread stalls on descheduled peers.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PROMPTS, NEW_TOKENS, MAX_PROMPT = 256, 128, 1000
MEMORY_SIZES = (1_000, 10_000)
COMMAND = ".venv/bin/python -m benchmarks.generate"


def setup(vocab: int = 512):
    """(tokenizer, random-weight DeepseekV32, task texts)."""
    from domains import get_domain
    from experts.model import ModelConfig, build_model
    from experts.tokenizer import train_tokenizer

    texts = [t["prompt"] + t["completion"] for d in ("math", "agents") for t in get_domain(d).make_tasks(300, 0)]
    tok = train_tokenizer(texts, vocab)
    model = build_model(ModelConfig(vocab_size=vocab, max_position_embeddings=1280), tok, seed=0).eval()
    return tok, model, texts


def make_prompts(tok, texts: list[str], n: int, low: int, high: int, seed: int = 0) -> list[str]:
    """`n` prompts of low..high tokens each (uniform), cut from shuffled task text."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = tok(" ".join(rng.sample(texts, 60)), add_special_tokens=False)["input_ids"][: rng.randint(low, high)]
        out.append(tok.decode(ids))
    return out


def timed(model, tok, prompts: list[str], engine) -> tuple[float, int]:
    from generation.backends import generate
    from generation.types import Request, SamplingConfig

    sampling = SamplingConfig(temperature=0.8, top_p=0.95, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    start = time.perf_counter()
    out = generate(model, tok, [Request(p) for p in prompts], sampling, engine, seed=0)
    seconds = time.perf_counter() - start
    assert all(c.model_tokens == NEW_TOKENS for c in out), "every sequence must generate max_new_tokens"
    return seconds, sum(c.model_tokens for c in out)


def throughput() -> list[dict]:
    from generation.types import EngineConfig

    tok, model, texts = setup()
    prompts = make_prompts(tok, texts, PROMPTS, 16, MAX_PROMPT)
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    rows = []
    for name, backend, batch in (
        ("native engine, 64 running", "native", 64),
        ("native engine, 256 running", "native", 256),
        ("model.generate (hf backend, dsa_sparse), batches of 64", "hf", 64),
        ("model.generate (hf backend, dsa_sparse), batches of 256", "hf", 256),
    ):
        seconds, tokens = timed(model, tok, prompts, EngineConfig(backend=backend, batch_size=batch))
        rows.append({"model": "DeepseekV32 (DSA)", "engine": name, "seconds": seconds, "tokens": tokens, "prompt_tokens": sum(lengths)})
    rows.extend(vllm_rows(tok, texts))
    return rows


def vllm_rows(tok, texts: list[str]) -> list[dict]:
    """vLLM vs model.generate on a dense Llama of the same width, or one row saying why not."""
    try:
        from generation import vllm_backend

        vllm_backend.worker_python()
    except (ImportError, RuntimeError) as e:
        return [{"model": "dense Llama", "engine": "vLLM backend", "missing": str(e)}]
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from generation.types import EngineConfig

    torch.manual_seed(0)
    dense = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok), hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=1280, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
        )
    )
    prompts = make_prompts(tok, texts, PROMPTS, 16, MAX_PROMPT)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dense.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        dense = AutoModelForCausalLM.from_pretrained(tmp).eval()  # vLLM loads the checkpoint from _name_or_path
        for name, backend in (("vLLM backend", "vllm"), ("model.generate (hf backend, sdpa)", "hf")):
            try:
                seconds, tokens = timed(dense, tok, prompts, EngineConfig(backend=backend, batch_size=64, hf_attention="sdpa"))
                rows.append({"model": "dense Llama", "engine": name, "seconds": seconds, "tokens": tokens})
            except Exception as e:  # noqa: BLE001 - a benchmark row reports why it is missing
                # One table cell: the error's last words (a worker's log tail ends with the cause).
                rows.append({"model": "dense Llama", "engine": name, "missing": f"{type(e).__name__}: ..." + " ".join(str(e).split())[-240:].replace("|", "/")})
    return rows


def memory_child(n: int) -> dict:
    """Stream n short prompts (8..32 tokens, 4 new each) through generate_shards and the merge; RSS in KiB."""
    import pyarrow as pa

    from data import tables
    from data.lineage import LineageRecord
    from data.shards import ShardDir, merge
    from generation.streaming import generate_shards
    from generation.types import Completion, EngineConfig, Request, SamplingConfig

    tok, model, texts = setup()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "prompts.parquet"
        record = LineageRecord(id="p", kind="dataset", stage="prepare", domain=None, name="prompts", uri="p", parents=[], params={}, code_version={})
        batches = (pa.Table.from_pylist([{"task_id": f"t{i + j}", "prompt": p} for j, p in enumerate(make_prompts(tok, texts, 1000, 8, 32, seed=i))]) for i in range(0, n, 1000))
        record.rows = n
        tables.write_stream(batches, src, record, pa.schema([("task_id", pa.string()), ("prompt", pa.string())]))
        loaded = _rss()["VmRSS"]
        jobs = (({"task_id": r["task_id"], "sample": 0}, Request(r["prompt"])) for r in tables.iter_rows(src))

        def to_table(batch: list[tuple[dict, Completion]]):
            return pa.Table.from_pylist([{**job, "completion": c.text, "token_ids": c.ids} for job, c in batch]), {}

        work = ShardDir(Path(tmp) / "work")
        sampling = SamplingConfig(temperature=0.8, max_new_tokens=4, ignore_eos=True)
        start = time.perf_counter()
        generate_shards(model, tok, jobs, sampling, EngineConfig(batch_size=64), work, to_table, ("task_id", "sample"), 128, seed=0)
        out = merge([work], Path(tmp) / "generations.parquet", LineageRecord(id="g", kind="dataset", stage="generate", domain=None, name="g", uri="g", parents=[], params={}, code_version={}))
        assert out.rows == n
        return {"prompts": n, "loaded_kib": loaded, "peak_kib": _rss()["VmHWM"], "seconds": time.perf_counter() - start}


def _rss() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


def memory() -> list[dict]:
    out = []
    for n in MEMORY_SIZES:
        run = subprocess.run([sys.executable, "-m", "benchmarks.generate", "--memory-child", str(n)], cwd=REPO, capture_output=True, text=True, check=True)
        out.append(json.loads(run.stdout.strip().splitlines()[-1]))
    return out


def gate() -> None:
    """Benchmark only what passed its test."""
    subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow", "tests/test_engine.py", "tests/test_streaming.py"], cwd=REPO, check=True)


def report(rows: list[dict], mem: list[dict]) -> str:
    lines = [
        "## Generation engine",
        "",
        f"`{COMMAND}` (one OpenMP thread; shared 2-core machine, so absolute numbers move with the load).",
        "",
        f"{PROMPTS} prompts of 16..{MAX_PROMPT} tokens ({rows[0]['prompt_tokens']} prompt tokens), {NEW_TOKENS} new tokens each (EOS ignored), "
        "temperature 0.8, top-p 0.95; all rows of a model run in one process, one after the other. The ratio is against the "
        "model's fastest model.generate row. Batch size means sequences running at once for the native engine, sequences "
        "per (left-padded) model.generate call for hf.",
        "",
        "| model | engine | seconds | new tokens | tokens/s | vs model.generate |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    # Each model's fastest model.generate row is the reference.
    base: dict[str, dict] = {}
    for r in rows:
        if "hf backend" in r["engine"] and "seconds" in r and (r["model"] not in base or r["seconds"] < base[r["model"]]["seconds"]):
            base[r["model"]] = r
    for r in rows:
        if "missing" in r:
            lines.append(f"| {r['model']} | {r['engine']} | — | — | — | not run: {r['missing']} |")
            continue
        tps = r["tokens"] / r["seconds"]
        ref = base.get(r["model"])
        ratio = f"{tps / (ref['tokens'] / ref['seconds']):.2f}x" if ref else "—"
        lines.append(f"| {r['model']} | {r['engine']} | {r['seconds']:.1f} | {r['tokens']} | {tps:.1f} | {ratio} |")
    lines += [
        "",
        "Peak memory of the streaming generate path (prompts of 8..32 tokens read lazily from Parquet, 4 new tokens, shards of 128, "
        "merged into one dataset), each size in a fresh process:",
        "",
        "| prompts | RSS after loading (MiB) | peak RSS (MiB) | peak above loaded (MiB) | seconds |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in mem:
        lines.append(f"| {m['prompts']} | {m['loaded_kib'] / 1024:.0f} | {m['peak_kib'] / 1024:.0f} | {(m['peak_kib'] - m['loaded_kib']) / 1024:.0f} | {m['seconds']:.0f} |")
    lines += ["", f"Peak at {mem[-1]['prompts']} vs {mem[0]['prompts']} prompts: {mem[-1]['peak_kib'] / mem[0]['peak_kib']:.2f}x."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--skip-tests", action="store_true", help="do not run the engine tests first")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return
    if not args.skip_tests:
        gate()
    rows = throughput()
    mem = memory()
    body = report(rows, mem)
    print(body)
    from benchmarks.record import write_section

    write_section("generate", body)


if __name__ == "__main__":
    main()
