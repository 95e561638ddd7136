"""One generation interface over three backends, with a tool loop: the model calls a tool, the environment answers, it goes on.

    native  `experts.engine`: continuous batching over a paged latent KV cache with our DSA kernels (DeepseekV32 only).
    hf      transformers' `model.generate` on fixed batches: the baseline the engine is benchmarked against.
    vllm    `experts.vllm_backend`, which finds the checkpoint through `model.config._name_or_path`.

Every sequence carries its own token ids, so a tool result is appended as tokens and the next
turn continues exactly where the model stopped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from experts.domains.base import CALL_CLOSE, RESULT_CLOSE, RESULT_OPEN, ToolEnv, last_call
from experts.engine.engine import Engine
from experts.engine.sequence import request_seed
from kernels.attention import ATTN_IMPLEMENTATION
from kernels.mla import enable_sparse_attention

ProgressFn = Callable[[int, int], None]


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples_per_prompt: int = Field(4, ge=1, description="completions sampled per prompt (rejection sampling keeps the verified ones)")
    temperature: float = Field(0.8, ge=0.0, description="0 means greedy")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens only; 0 = off")
    max_new_tokens: int = Field(96, ge=1, description="model tokens per completion, tool results excluded")
    max_tool_turns: int = Field(4, ge=0, description="tool calls answered per completion")
    stop: list[str] = Field(default_factory=list, description="a completion ends once its text since the last tool result contains one of these (included)")
    ignore_eos: bool = Field(False, description="EOS and the tool-call close marker are ordinary tokens: every completion runs max_new_tokens (benchmarks)")
    batch_size: int = Field(64, ge=1, description="sequences decoded together (native: running at once; hf: per model.generate call)")
    backend: Literal["native", "hf", "vllm"] = Field("native", description="native: our engine (DeepseekV32); hf: model.generate (baseline); vllm: experts.vllm_backend")
    kv_cache_tokens: int | None = Field(
        None, ge=16, description="native: KV cache slots shared by all running sequences; default batch_size x max_position_embeddings"
    )
    max_step_tokens: int = Field(8192, ge=1, description="native: prompt tokens prefilled per step (one longer prompt still runs alone)")
    attention: Literal["dsa_sparse", "sdpa"] = Field(
        "dsa_sparse",
        description="hf backend: dsa_sparse runs our kernels over the indexer's top-k, sdpa transformers' dense path with a top-k mask (the same selection, which the native engine always uses)",
    )
    seed: int = Field(0, description="request i samples with its own generator seeded from (seed, i)")

    @model_validator(mode="after")
    def _check(self) -> GenerateConfig:
        if self.stop and self.backend == "hf":
            raise ValueError("stop: stop strings need backend native or vllm")
        if any(not s for s in self.stop):
            raise ValueError("stop: empty stop string")
        return self


@dataclass
class Request:
    prompt: str
    env: ToolEnv | None = None
    seed: int | None = None  # sampling seed; default from (GenerateConfig.seed, request index)


@dataclass
class Completion:
    text: str
    finish_reason: str  # eos | length | tool_turns | stop
    model_tokens: int
    tool_calls: int
    ids: list[int]  # [BOS] prompt completion, as the model saw them (tool results included)
    prompt_len: int


@dataclass
class _Seq:
    request: Request
    ids: list[int]
    prompt_len: int
    model_tokens: int = 0
    tool_calls: int = 0
    finish_reason: str | None = None
    pieces: list[int] = field(default_factory=list)


def generate_stream(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    requests: Iterable[Request],
    cfg: GenerateConfig,
    progress: ProgressFn | None = None,
) -> Iterator[tuple[int, Completion]]:
    """(request index, completion) as each finishes; `requests` is consumed lazily, as batch places free up.

    `progress(done, total)` is called when `requests` has a length.
    """
    total = len(requests) if isinstance(requests, Sequence) else None
    if cfg.backend == "vllm":
        from experts.vllm_backend import generate_stream as vllm_stream  # its own environment; deferred

        stream = vllm_stream(model, tokenizer, requests, cfg, progress)
    else:
        stream = (_native_stream if cfg.backend == "native" else _hf_stream)(model, tokenizer, requests, cfg)
    for done, item in enumerate(stream, 1):
        if progress is not None and total is not None and cfg.backend != "vllm":
            progress(done, total)
        yield item


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    requests: Sequence[Request],
    cfg: GenerateConfig,
    progress: ProgressFn | None = None,
) -> list[Completion]:
    """One completion per request, in order (repeat a request to sample it several times)."""
    out: list[Completion | None] = [None] * len(requests)
    for i, completion in generate_stream(model, tokenizer, requests, cfg, progress):
        out[i] = completion
    return out  # type: ignore[return-value]


def _completion(tokenizer: PreTrainedTokenizerFast, ids: list[int], prompt_len: int, finish_reason: str, model_tokens: int, tool_calls: int) -> Completion:
    special = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    return Completion(
        text=tokenizer.decode([t for t in ids[prompt_len:] if t not in special]),
        finish_reason=finish_reason,
        model_tokens=model_tokens,
        tool_calls=tool_calls,
        ids=ids,
        prompt_len=prompt_len,
    )


def _native_stream(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, requests: Iterable[Request], cfg: GenerateConfig) -> Iterator[tuple[int, Completion]]:
    seeded = ((i, request_seed(cfg.seed, i) if r.seed is None else r.seed, r) for i, r in enumerate(requests))
    for seq in Engine(model, tokenizer, cfg).stream(seeded):
        yield seq.index, _completion(tokenizer, seq.ids, seq.prompt_len, seq.finish_reason, seq.model_tokens, seq.tool_calls)


@torch.no_grad()
def _hf_stream(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, requests: Iterable[Request], cfg: GenerateConfig) -> Iterator[tuple[int, Completion]]:
    """model.generate over fixed batches of `batch_size`, each run until all its sequences end; one global seed."""
    model.eval()
    if cfg.attention == ATTN_IMPLEMENTATION:
        enable_sparse_attention(model)
    else:
        model.set_attn_implementation(cfg.attention)
    torch.manual_seed(cfg.seed)
    call_close = tokenizer.convert_tokens_to_ids(CALL_CLOSE)
    indexed = enumerate(requests)
    while chunk := list(itertools.islice(indexed, cfg.batch_size)):
        seqs = []
        for _, r in chunk:
            ids = [tokenizer.bos_token_id, *tokenizer(r.prompt, add_special_tokens=False)["input_ids"]]
            seqs.append(_Seq(request=r, ids=ids, prompt_len=len(ids)))
        active = seqs
        while active:
            _step(model, tokenizer, active, cfg, call_close)
            active = [s for s in active if s.finish_reason is None]
        for (i, _), s in zip(chunk, seqs):
            yield i, _completion(tokenizer, s.ids, s.prompt_len, s.finish_reason or "length", s.model_tokens, s.tool_calls)


def _step(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, active: list[_Seq], cfg: GenerateConfig, call_close: int) -> None:
    """Run every active sequence until it ends or calls a tool; answer the tool calls."""
    width = max(len(s.ids) for s in active)
    pad = tokenizer.pad_token_id
    # Left padding keeps every sequence's next token at the same position for batched decoding.
    input_ids = torch.tensor([[pad] * (width - len(s.ids)) + s.ids for s in active])
    attention_mask = torch.tensor([[0] * (width - len(s.ids)) + [1] * len(s.ids) for s in active])
    budget = max(cfg.max_new_tokens - s.model_tokens for s in active)
    greedy = cfg.temperature == 0.0
    stops = [] if cfg.ignore_eos else [tokenizer.eos_token_id, call_close]
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=budget,
        do_sample=not greedy,
        temperature=None if greedy else cfg.temperature,
        top_p=None if greedy else cfg.top_p,
        top_k=None if greedy or cfg.top_k == 0 else cfg.top_k,
        eos_token_id=stops,
        pad_token_id=pad,
    )
    for s, row in zip(active, out[:, width:].tolist()):
        new = []
        for t in row:
            if s.model_tokens + len(new) >= cfg.max_new_tokens:
                break
            new.append(t)
            if t in stops:
                break
        s.ids += new
        s.model_tokens += len(new)
        last = new[-1] if new and new[-1] in stops else None
        if last == tokenizer.eos_token_id:
            s.finish_reason = "eos"
        elif last == call_close and s.request.env is not None and s.tool_calls < cfg.max_tool_turns:
            s.tool_calls += 1
            call = last_call(tokenizer.decode(s.ids[s.prompt_len :]))
            result = s.request.env.call(call)
            s.ids += tokenizer(f"{RESULT_OPEN}{result}{RESULT_CLOSE}", add_special_tokens=False)["input_ids"]
        elif last == call_close:
            s.finish_reason = "tool_turns"
        else:
            s.finish_reason = "length"
        if s.finish_reason is None and s.model_tokens >= cfg.max_new_tokens:
            s.finish_reason = "length"
