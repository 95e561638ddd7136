"""Batched sampling with a tool loop: the model calls a tool, the environment answers, it goes on.

Every sequence carries its own token ids, so a tool result is appended as tokens and the next
turn continues exactly where the model stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from experts.domains.base import CALL_CLOSE, CALL_OPEN, RESULT_CLOSE, RESULT_OPEN, ToolEnv
from kernels.attention import ATTN_IMPLEMENTATION
from kernels.mla import enable_sparse_attention

ProgressFn = Callable[[int, int], None]


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples_per_prompt: int = Field(4, ge=1, description="completions sampled per prompt (rejection sampling keeps the verified ones)")
    temperature: float = Field(0.8, ge=0.0, description="0 means greedy")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(96, ge=1, description="model tokens per completion, tool results excluded")
    max_tool_turns: int = Field(4, ge=0, description="tool calls answered per completion")
    batch_size: int = Field(64, ge=1)
    attention: Literal["dsa_sparse", "sdpa"] = Field(
        "dsa_sparse", description="dsa_sparse: our kernels attend to the indexer's top-k only; sdpa: transformers' dense path with a top-k mask"
    )
    seed: int = 0


@dataclass
class Request:
    prompt: str
    env: ToolEnv | None = None


@dataclass
class Completion:
    text: str
    finish_reason: str  # eos | length | tool_turns
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


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    requests: Sequence[Request],
    cfg: GenerateConfig,
    progress: ProgressFn | None = None,
) -> list[Completion]:
    """One completion per request, in order (repeat a request to sample it several times)."""
    model.eval()
    if cfg.attention == ATTN_IMPLEMENTATION:
        enable_sparse_attention(model)
    else:
        model.set_attn_implementation(cfg.attention)
    torch.manual_seed(cfg.seed)
    call_close = tokenizer.convert_tokens_to_ids(CALL_CLOSE)
    seqs = []
    for r in requests:
        ids = [tokenizer.bos_token_id, *tokenizer(r.prompt, add_special_tokens=False)["input_ids"]]
        seqs.append(_Seq(request=r, ids=ids, prompt_len=len(ids)))
    done = 0
    for start in range(0, len(seqs), cfg.batch_size):
        chunk = seqs[start : start + cfg.batch_size]
        active = chunk
        while active:
            _step(model, tokenizer, active, cfg, call_close)
            active = [s for s in active if s.finish_reason is None]
        done += len(chunk)
        if progress is not None:
            progress(done, len(seqs))
    special = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    return [
        Completion(
            text=tokenizer.decode([t for t in s.ids[s.prompt_len :] if t not in special]),
            finish_reason=s.finish_reason or "length",
            model_tokens=s.model_tokens,
            tool_calls=s.tool_calls,
            ids=s.ids,
            prompt_len=s.prompt_len,
        )
        for s in seqs
    ]


def _step(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, active: list[_Seq], cfg: GenerateConfig, call_close: int) -> None:
    """Run every active sequence until it ends or calls a tool; answer the tool calls."""
    width = max(len(s.ids) for s in active)
    pad = tokenizer.pad_token_id
    # Left padding keeps every sequence's next token at the same position for batched decoding.
    input_ids = torch.tensor([[pad] * (width - len(s.ids)) + s.ids for s in active])
    attention_mask = torch.tensor([[0] * (width - len(s.ids)) + [1] * len(s.ids) for s in active])
    budget = max(cfg.max_new_tokens - s.model_tokens for s in active)
    greedy = cfg.temperature == 0.0
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=budget,
        do_sample=not greedy,
        temperature=None if greedy else cfg.temperature,
        top_p=None if greedy else cfg.top_p,
        top_k=None,
        eos_token_id=[tokenizer.eos_token_id, call_close],
        pad_token_id=pad,
    )
    for s, row in zip(active, out[:, width:].tolist()):
        new = []
        for t in row:
            if s.model_tokens + len(new) >= cfg.max_new_tokens:
                break
            new.append(t)
            if t in (tokenizer.eos_token_id, call_close):
                break
        s.ids += new
        s.model_tokens += len(new)
        if new and new[-1] == tokenizer.eos_token_id:
            s.finish_reason = "eos"
        elif new and new[-1] == call_close and s.request.env is not None and s.tool_calls < cfg.max_tool_turns:
            s.tool_calls += 1
            call = _last_call(tokenizer.decode(s.ids[s.prompt_len :]))
            result = s.request.env.call(call)
            s.ids += tokenizer(f"{RESULT_OPEN}{result}{RESULT_CLOSE}", add_special_tokens=False)["input_ids"]
        elif new and new[-1] == call_close:
            s.finish_reason = "tool_turns"
        else:
            s.finish_reason = "length"
        if s.finish_reason is None and s.model_tokens >= cfg.max_new_tokens:
            s.finish_reason = "length"


def _last_call(text: str) -> str:
    start = text.rfind(CALL_OPEN)
    return text[start + len(CALL_OPEN) : text.rfind(CALL_CLOSE)].strip() if start >= 0 else ""
