"""One generation interface over three backends, with a tool loop: the model calls a tool, the environment answers, it goes on.

    native  `generation.engine`: continuous batching over a paged latent KV cache with our DSA kernels (DeepseekV32 only).
    auto    native for a DeepseekV32 model, hf for any other (a Llama or Qwen student runs dense).
    hf      `generation.hf`: transformers' `model.generate` on fixed batches, the baseline the engine is benchmarked against.
    vllm    `generation.vllm_backend`: vLLM's offline engine in its own environment, loading the model's checkpoint directory.

All three end turns, answer tool calls and build completions with `generation.turns`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerFast

from generation.engine.engine import Engine
from generation.hf import hf_stream
from generation.types import Completion, EngineConfig, ProgressFn, Request, SamplingConfig, request_seed
from generation.vllm_backend import vllm_stream


def generate_stream(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    requests: Iterable[Request],
    sampling: SamplingConfig,
    engine: EngineConfig,
    *,
    seed: int,
    progress: ProgressFn | None = None,
) -> Iterator[tuple[int, Completion]]:
    """(request index, completion) as each finishes; `requests` is consumed lazily, as batch places free up.

    Request i samples with its own seed, `request_seed(seed, i)` unless it carries one (native and
    vllm; hf draws from one global generator). `progress(done, total)` is called when `requests` has a length.
    """
    total = len(requests) if isinstance(requests, Sequence) else None
    backend = engine.backend
    if backend == "auto":
        backend = "native" if model.config.model_type == "deepseek_v32" else "hf"
    if backend == "native":
        seeded = ((i, request_seed(seed, i) if r.seed is None else r.seed, r) for i, r in enumerate(requests))
        runner = Engine(model, tokenizer, sampling, engine)
        stream = ((seq.index, runner.turns.completion(seq)) for seq in runner.stream(seeded))
    elif backend == "hf":
        stream = hf_stream(model, tokenizer, requests, sampling, engine, seed)
    else:
        stream = vllm_stream(model, tokenizer, requests, sampling, engine, seed)
    for done, item in enumerate(stream, 1):
        if progress is not None and total is not None:
            progress(done, total)
        yield item


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    requests: Sequence[Request],
    sampling: SamplingConfig,
    engine: EngineConfig,
    *,
    seed: int,
    progress: ProgressFn | None = None,
) -> list[Completion]:
    """One completion per request, in order (repeat a request to sample it several times)."""
    out: list[Completion | None] = [None] * len(requests)
    for i, completion in generate_stream(model, tokenizer, requests, sampling, engine, seed=seed, progress=progress):
        out[i] = completion
    return out  # type: ignore[return-value]
