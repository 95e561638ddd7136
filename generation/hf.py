"""The hf backend: transformers' `model.generate` on fixed batches, the baseline the native engine is measured against."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from generation.turns import Trace, Turns
from generation.types import Completion, EngineConfig, Request, SamplingConfig
from kernels.attention import ATTN_IMPLEMENTATION
from kernels.cache import PreallocatedCache
from kernels.mla import enable_sparse_attention


@torch.no_grad()
def hf_stream(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, requests: Iterable[Request], sampling: SamplingConfig, engine: EngineConfig, seed: int
) -> Iterator[tuple[int, Completion]]:
    """model.generate over batches of `engine.batch_size`, each run until all its sequences end; one global seed."""
    model.eval()
    if model.config.model_type != "deepseek_v32":  # no indexer: dense is the only attention it has
        model.set_attn_implementation("sdpa")
    elif engine.hf_attention == ATTN_IMPLEMENTATION:
        enable_sparse_attention(model)
    else:
        model.set_attn_implementation(engine.hf_attention)
    torch.manual_seed(seed)
    turns = Turns(tokenizer, sampling)
    indexed = enumerate(requests)
    while chunk := list(itertools.islice(indexed, engine.batch_size)):
        seqs = [turns.start(r.prompt, r.env) for _, r in chunk]
        active = seqs
        while active:
            _step(model, tokenizer, turns, active)
            active = [s for s in active if s.finish_reason is None]
        for (i, _), s in zip(chunk, seqs):
            yield i, turns.completion(s)


def _step(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, turns: Turns, active: list[Trace]) -> None:
    """One model turn of every active sequence (until it ends or calls a tool)."""
    s = turns.sampling
    width = max(len(q.ids) for q in active)
    pad = tokenizer.pad_token_id
    # Left padding keeps every sequence's next token at the same position for batched decoding.
    input_ids = torch.tensor([[pad] * (width - len(q.ids)) + q.ids for q in active], device=model.device)
    attention_mask = torch.tensor([[0] * (width - len(q.ids)) + [1] * len(q.ids) for q in active], device=model.device)
    greedy = s.temperature == 0.0
    new_tokens = max(s.max_new_tokens - q.model_tokens for q in active)
    # transformers' default DynamicCache copies the whole cache to append each token.
    cache = PreallocatedCache(model.config, capacity=width + new_tokens) if PreallocatedCache.fits(model.config) else None
    # Turns.push finds a text marker too; stopping on it here saves generating past it.
    stop_texts = turns.stop_texts()
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        past_key_values=cache,
        max_new_tokens=new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else s.temperature,
        top_p=None if greedy else s.top_p,
        top_k=None if greedy or s.top_k == 0 else s.top_k,
        eos_token_id=turns.stop_tokens(),
        pad_token_id=pad,
        **({"stop_strings": stop_texts, "tokenizer": tokenizer} if stop_texts else {}),
    )
    for q, row in zip(active, out[:, width:].tolist()):
        turns.push_turn(q, row)
