"""The turn logic every backend shares: what a generated token means for the sequence it extends.

A sequence is the prompt's tokens (`prompt_ids`), then model turns. A turn ends at EOS (the completion is done), at the
tool-call close marker (the call is handed to the request's environment and its answer appended
as `<result>...</result>` tokens, and the next turn starts after it), at a stop string, or when the
sequence has used its token budget. A call written inside a ``<think>`` span is reasoning, not a
call: it does not end the turn (domains/base.py). The native engine feeds tokens one at a time as it samples
them; the hf and vLLM backends feed each turn's tokens after their own generate call returns, and
stop at the first token that ends the turn, so all three decide alike.

A pretrained tokenizer has no tokens for our markers (`</call>`, `<result>`): they are several
ordinary tokens there, so a turn ends when the decoded turn text reaches `</call>`, and the
environment's spans are found in the decoded text; a tokenizer that has the markers as single
tokens (ours) is matched by id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerFast

from domains.base import CALL_CLOSE, RESULT_CLOSE, RESULT_OPEN, ToolEnv, in_thought, last_call, without_thoughts
from generation.types import Completion, FinishReason, SamplingConfig

# Label of a position that carries no loss (transformers' and torch's ignore_index).
IGNORE = -100


def prompt_ids(tokenizer: PreTrainedTokenizerFast, prompt: str) -> list[int]:
    """The tokens a model sees before its answer: the tokenizer's chat template around the prompt
    when it has one (a pretrained chat model), else [BOS] prompt ([BOS] only if the tokenizer has one)."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    return [*bos, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]


@dataclass(eq=False)
class Trace:
    """One sequence's tokens and where its current turn began. Backends subclass it with their own state."""

    ids: list[int]  # [BOS] prompt completion, tool results included
    prompt_len: int
    env: ToolEnv | None = None
    model_tokens: int = 0
    tool_calls: int = 0
    finish_reason: FinishReason | None = None
    turn_start: int = field(init=False)  # after the prompt or the last tool result

    def __post_init__(self) -> None:
        self.turn_start = len(self.ids)


class Turns:
    """The rules of one generate call: its tokenizer's markers and its sampling settings."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, sampling: SamplingConfig) -> None:
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.eos = tokenizer.eos_token_id
        self.call_close = marker_id(tokenizer, CALL_CLOSE)  # None: matched as text
        # A stop string (or a text marker) ends at the newest token and every token is at least one byte.
        self.stop_window = max((len(s.encode()) for s in sampling.stop), default=0)
        self.call_window = len(CALL_CLOSE.encode())
        self.special = {tokenizer.pad_token_id, tokenizer.bos_token_id, self.eos} - {None}

    def start(self, prompt: str, env: ToolEnv | None) -> Trace:
        ids = prompt_ids(self.tokenizer, prompt)
        return Trace(ids=ids, prompt_len=len(ids), env=env)

    def stop_tokens(self) -> list[int]:
        """The tokens a backend must stop its generate call on (each ends a turn)."""
        if self.sampling.ignore_eos:
            return []
        return [t for t in (self.eos, self.call_close) if t is not None]

    def stop_texts(self) -> list[str]:
        """Text a backend must also stop on: a tool call's close marker that the tokenizer splits into several tokens."""
        if self.sampling.ignore_eos or self.call_close is not None:
            return []
        return [CALL_CLOSE]

    def push(self, seq: Trace, token: int) -> bool:
        """Append one model token; True when it ended the turn (a tool call was answered, or the sequence finished)."""
        s = self.sampling
        seq.ids.append(token)
        seq.model_tokens += 1
        answered = False
        if not s.ignore_eos and self._closes_call(seq, token):
            if seq.env is not None and seq.tool_calls < s.max_tool_turns:
                self._answer_call(seq)
                answered = True
            else:
                seq.finish_reason = "tool_turns"
        elif not s.ignore_eos and token == self.eos:
            seq.finish_reason = "eos"
        elif self.stop_window and self._hit_stop(seq):
            seq.finish_reason = "stop"
        if seq.finish_reason is None and seq.model_tokens >= s.max_new_tokens:
            seq.finish_reason = "length"
        return answered or seq.finish_reason is not None

    def push_turn(self, seq: Trace, tokens: Sequence[int]) -> bool:
        """Feed a backend's generated tokens up to the first that ends the turn (the rest are dropped); True if one did."""
        return any(self.push(seq, t) for t in tokens)

    def cut(self, seq: Trace) -> None:
        """The backend cannot go on (the model's context is full): the sequence ends where it is."""
        seq.finish_reason = "length"

    def completion(self, seq: Trace) -> Completion:
        return Completion(
            text=self.tokenizer.decode([t for t in seq.ids[seq.prompt_len :] if t not in self.special]),
            finish_reason=seq.finish_reason or "length",
            model_tokens=seq.model_tokens,
            tool_calls=seq.tool_calls,
            ids=seq.ids,
            prompt_len=seq.prompt_len,
        )

    def _answer_call(self, seq: Trace) -> None:
        """Hand the turn's call to the environment and append its answer; the next turn starts after it."""
        seq.tool_calls += 1
        call = last_call(without_thoughts(self.tokenizer.decode(seq.ids[seq.turn_start :])))
        seq.ids += self.tokenizer(f"{RESULT_OPEN}{seq.env.call(call)}{RESULT_CLOSE}", add_special_tokens=False)["input_ids"]
        seq.turn_start = len(seq.ids)

    def _closes_call(self, seq: Trace, token: int) -> bool:
        """Whether `token` closes a call that is to be run: a call written inside a thought is not acted on."""
        if self.call_close is not None:
            closes = token == self.call_close
        else:
            closes = CALL_CLOSE in self.tokenizer.decode(seq.ids[max(seq.turn_start, len(seq.ids) - self.call_window) :])
        return closes and not self.thinking(seq)

    def thinking(self, seq: Trace) -> bool:
        """Whether the sequence is inside a thought (a call closed now is part of it: the backend goes on)."""
        # A thought cannot span turns: the call that ended the last turn was outside any thought.
        return in_thought(self.tokenizer.decode(seq.ids[seq.turn_start :]))

    def _hit_stop(self, seq: Trace) -> bool:
        text = self.tokenizer.decode(seq.ids[max(seq.turn_start, len(seq.ids) - self.stop_window) :])
        return any(stop in text for stop in self.sampling.stop)


def marker_id(tokenizer: PreTrainedTokenizerFast, marker: str) -> int | None:
    """The id of `marker` if the tokenizer has it as one token, else None (it is then several ordinary tokens)."""
    token = tokenizer.convert_tokens_to_ids(marker)
    return token if token is not None and token != tokenizer.unk_token_id and tokenizer.convert_ids_to_tokens(token) == marker else None


def mask_tool_results(tokenizer: PreTrainedTokenizerFast, ids: Sequence[int], labels: list[int]) -> list[int]:
    """Set the labels of every <result>...</result> span (markers included) to IGNORE: the environment wrote them."""
    open_id, close_id = marker_id(tokenizer, RESULT_OPEN), marker_id(tokenizer, RESULT_CLOSE)
    if open_id is None or close_id is None:
        return mask_tool_results_by_text(tokenizer, ids, labels)
    inside = False
    for i, t in enumerate(ids):
        if t == open_id:
            inside = True
        if inside:
            labels[i] = IGNORE
        if t == close_id:
            inside = False
    return labels


def mask_tool_results_by_text(tokenizer: PreTrainedTokenizerFast, ids: Sequence[int], labels: list[int]) -> list[int]:
    """`mask_tool_results` for markers that are several tokens: each span is found in the decoded text
    and every token holding part of it is masked (a token that also holds a character beside the span
    goes with it)."""
    ids = list(ids)
    decode = lambda n: tokenizer.decode(ids[:n], clean_up_tokenization_spaces=False)  # noqa: E731
    text = decode(len(ids))

    def token_at(char: int) -> int:
        """The first token whose prefix decodes past `char` (binary search: O(log n) decodes a span end)."""
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(decode(mid + 1)) > char:
                hi = mid
            else:
                lo = mid + 1
        return lo

    start = text.find(RESULT_OPEN)
    while start >= 0:
        close = text.find(RESULT_CLOSE, start)
        end = len(text) if close < 0 else close + len(RESULT_CLOSE)  # an unclosed result runs to the end
        for i in range(token_at(start), min(token_at(end - 1) + 1, len(ids))):
            labels[i] = IGNORE
        start = text.find(RESULT_OPEN, end)
    return labels


def model_token_positions(tokenizer: PreTrainedTokenizerFast, ids: Sequence[int], prompt_len: int) -> list[int]:
    """Positions in `ids` of the tokens the model produced: after the prompt, outside tool results."""
    labels = mask_tool_results(tokenizer, ids, [IGNORE] * prompt_len + list(ids[prompt_len:]))
    return [i for i, label in enumerate(labels) if label != IGNORE]
