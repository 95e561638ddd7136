"""The teacher's top-k log-probabilities over its own finished generations, stored for logit-level KD.

One forward pass of the expert over each finished sequence (prompt, its tokens, tool results)
gives, at every token the expert itself produced, the distribution it sampled that token from
(before temperature and top-p). Only the top-k of each is kept, in narrow types: token ids as
int16 (int32 for vocabularies past 32767) and log-probs as float16. Tool-result tokens were
written by the environment and carry no loss, so they get no entry.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from generation.turns import model_token_positions

TOPK_COLUMNS = ("topk_ids", "topk_logprobs")


class TeacherLogprobsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topk: int = Field(20, ge=0, le=4096, description="teacher log-probs stored per generated token (0: none, no logit-level KD possible)")
    batch_size: int = Field(32, ge=1, description="sequences per teacher forward pass")


def id_type(vocab_size: int) -> pa.DataType:
    return pa.int16() if vocab_size <= 2**15 - 1 else pa.int32()


@torch.no_grad()
def teacher_topk(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    sequences: Sequence[tuple[Sequence[int], int]],
    k: int,
    batch_size: int,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per (ids, prompt_len): the top-k ([T, k] int64 ids, [T, k] fp32 log-probs) at its T loss positions.

    The forward runs with the model's own sparse selection (its indexer's top-k) through
    transformers' sdpa path: the selection every generation backend attends to, and on CPU the
    fastest way to apply it to whole sequences.
    """
    model.eval()
    model.set_attn_implementation("sdpa")
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(sequences)
    # Similar lengths per batch: padding is wasted compute.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(sequences[i][0]) for i in chunk)
        # Right padding: a causal model's outputs at real tokens do not depend on what follows, up
        # to ties in the indexer's top-k (keys whose ReLU scores are all zero), which transformers
        # breaks differently for different padded widths (tests/test_distill.py).
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids = sequences[i][0]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits.float().cpu()
        for row, i in enumerate(chunk):
            ids, prompt_len = sequences[i]
            # The logits at position t predict token t + 1.
            pred = torch.tensor(model_token_positions(tokenizer, ids, prompt_len), dtype=torch.long) - 1
            lp, top = torch.log_softmax(logits[row, pred], dim=-1).topk(k, dim=-1)
            out[i] = (top, lp)
    return out  # type: ignore[return-value]


def topk_columns(topk: Sequence[tuple[torch.Tensor, torch.Tensor]], k: int, vocab_size: int) -> dict[str, pa.Array]:
    """Arrow columns: per row a list of fixed-size k-lists of ids and of float16 log-probs."""
    ids_type, lp_type = pa.list_(pa.list_(id_type(vocab_size), k)), pa.list_(pa.list_(pa.float16(), k))
    return {
        "topk_ids": pa.array([ids.to(torch.int32).numpy().tolist() for ids, _ in topk], type=ids_type),
        "topk_logprobs": pa.array([list(lp.to(torch.float16).numpy()) for _, lp in topk], type=lp_type),
    }


def stored_bytes_per_token(columns: dict[str, pa.Array], tokens: int) -> float:
    """Bytes per generated token of the top-k columns as a zstd Parquet file stores them."""
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink, compression="zstd")
    return len(sink.getvalue()) / max(1, tokens)


def generation_columns(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    sequences: Sequence[tuple[Sequence[int], int]],
    cfg: TeacherLogprobsConfig,
) -> tuple[dict[str, pa.Array], dict[str, float]]:
    """Columns to store beside each generation, and their metrics.

    `token_ids` ([BOS] prompt completion, tool results included) and `prompt_len` always, so that
    the student trains on exactly the expert's tokens; with `cfg.topk` the teacher's top-k per
    generated token, and `logprob_bytes_per_token` (zstd Parquet bytes of the top-k columns per
    generated token).
    """
    vocab = max(len(tokenizer), model.config.vocab_size)
    ids_type = id_type(vocab)
    columns = {
        "token_ids": pa.array([list(ids) for ids, _ in sequences], type=pa.list_(ids_type)),
        "prompt_len": pa.array([n for _, n in sequences], type=pa.int32()),
    }
    if cfg.topk == 0:
        return columns, {}
    topk = teacher_topk(model, tokenizer, sequences, cfg.topk, cfg.batch_size)
    top = topk_columns(topk, cfg.topk, vocab)
    tokens = sum(len(ids) for ids, _ in topk)
    return {**columns, **top}, {"logprob_topk": cfg.topk, "logprob_tokens": tokens, "logprob_bytes_per_token": stored_bytes_per_token(top, tokens)}
