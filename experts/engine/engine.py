"""The engine loop: schedule -> run -> sample -> postprocess, yielding sequences as they finish.

Requests are pulled from their iterator only as batch places free up, so memory holds the running
batch and a queue of at most `batch_size` prompts, however many requests there are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from transformers import PreTrainedModel, PreTrainedTokenizerFast

from experts.domains.base import CALL_CLOSE, RESULT_CLOSE, RESULT_OPEN, last_call
from experts.engine.runner import ModelRunner
from experts.engine.sampler import sample
from experts.engine.scheduler import Scheduler
from experts.engine.sequence import Sequence

if TYPE_CHECKING:
    from experts.generation import GenerateConfig, Request


class Engine:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, cfg: GenerateConfig) -> None:
        self.tokenizer = tokenizer
        self.cfg = cfg
        cache_tokens = cfg.kv_cache_tokens or cfg.batch_size * model.config.max_position_embeddings
        self.runner = ModelRunner(model, cache_tokens)
        self.scheduler = Scheduler(self.runner.cache, cfg.batch_size, cfg.max_step_tokens)
        self.eos = tokenizer.eos_token_id
        self.call_close = tokenizer.convert_tokens_to_ids(CALL_CLOSE)
        # A stop string ends at the newest token and every token is at least one byte.
        self.stop_window = max((len(s.encode()) for s in cfg.stop), default=0)

    def stream(self, requests: Iterable[tuple[int, int, Request]]) -> Iterator[Sequence]:
        """Finished sequences, in the order they finish, from (index, seed, request) triples."""
        pending = iter(requests)
        sampling = self.cfg.temperature > 0
        while True:
            self._refill(pending)
            if not self.scheduler.has_work():
                return
            seqs, prefill = self.scheduler.schedule()
            logits = self.runner.run(seqs, prefill)
            tokens = sample(logits, [s.rng() for s in seqs] if sampling else [], self.cfg.temperature, self.cfg.top_p, self.cfg.top_k)
            for seq, token in zip(seqs, tokens.tolist()):
                self._postprocess(seq, token)
                if seq.finish_reason is not None:
                    self.scheduler.finish(seq)
                    yield seq

    def _refill(self, pending: Iterator[tuple[int, int, Request]]) -> None:
        while len(self.scheduler.waiting) < self.cfg.batch_size:
            item = next(pending, None)
            if item is None:
                return
            index, seed, request = item
            ids = [self.tokenizer.bos_token_id, *self.tokenizer(request.prompt, add_special_tokens=False)["input_ids"]]
            self.scheduler.add(Sequence(index=index, ids=ids, prompt_len=len(ids), seed=seed, env=request.env))

    def _postprocess(self, seq: Sequence, token: int) -> None:
        cfg = self.cfg
        seq.ids.append(token)
        seq.model_tokens += 1
        markers = not cfg.ignore_eos
        if markers and token == self.call_close and seq.env is not None and seq.tool_calls < cfg.max_tool_turns:
            self._answer_call(seq)
        elif markers and token == self.eos:
            seq.finish_reason = "eos"
        elif markers and token == self.call_close:
            seq.finish_reason = "tool_turns"
        elif self.stop_window and self._hit_stop(seq):
            seq.finish_reason = "stop"
        if seq.finish_reason is None and seq.model_tokens >= cfg.max_new_tokens:
            seq.finish_reason = "length"
        if seq.finish_reason is None and seq.pending > 1:
            self.scheduler.continue_later(seq)

    def _answer_call(self, seq: Sequence) -> None:
        """Hand the call to the request's environment and append its answer; the cache is extended, not rebuilt."""
        seq.tool_calls += 1
        text = self.tokenizer.decode(seq.ids[seq.turn_start :])
        call = last_call(text)
        result = seq.env.call(call)
        seq.ids += self.tokenizer(f"{RESULT_OPEN}{result}{RESULT_CLOSE}", add_special_tokens=False)["input_ids"]
        seq.turn_start = len(seq.ids)

    def _hit_stop(self, seq: Sequence) -> bool:
        text = self.tokenizer.decode(seq.ids[max(seq.turn_start, len(seq) - self.stop_window) :])
        return any(s in text for s in self.cfg.stop)
