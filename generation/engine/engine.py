"""The engine loop: schedule -> run -> sample -> postprocess, yielding sequences as they finish.

Requests are pulled from their iterator only as batch places free up, so memory holds the running
batch and a queue of at most `batch_size` prompts, however many requests there are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from transformers import PreTrainedModel, PreTrainedTokenizerFast

from generation.engine.runner import ModelRunner
from generation.engine.sampler import sample
from generation.engine.scheduler import Scheduler
from generation.engine.sequence import Sequence
from generation.turns import Turns
from generation.types import EngineConfig, Request, SamplingConfig


class Engine:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, sampling: SamplingConfig, engine: EngineConfig) -> None:
        self.turns = Turns(tokenizer, sampling)
        self.sampling = sampling
        self.batch_size = engine.batch_size
        cache_tokens = engine.kv_cache_tokens or engine.batch_size * model.config.max_position_embeddings
        self.runner = ModelRunner(model, cache_tokens)
        self.scheduler = Scheduler(self.runner.cache, engine.batch_size, engine.max_step_tokens)

    def stream(self, requests: Iterable[tuple[int, int, Request]]) -> Iterator[Sequence]:
        """Finished sequences, in the order they finish, from (index, seed, request) triples."""
        pending = iter(requests)
        s = self.sampling
        while True:
            self._refill(pending)
            if not self.scheduler.has_work():
                return
            seqs, prefill = self.scheduler.schedule()
            logits = self.runner.run(seqs, prefill)
            tokens = sample(logits, [q.rng() for q in seqs] if s.temperature > 0 else [], s.temperature, s.top_p, s.top_k)
            for seq, token in zip(seqs, tokens.tolist()):
                self.turns.push(seq, token)
                if seq.finish_reason is not None:
                    self.scheduler.finish(seq)
                    yield seq
                elif seq.pending > 1:  # a tool result was appended: prefill it, keeping the cache
                    self.scheduler.continue_later(seq)

    def _refill(self, pending: Iterator[tuple[int, int, Request]]) -> None:
        while len(self.scheduler.waiting) < self.batch_size:
            item = next(pending, None)
            if item is None:
                return
            index, seed, request = item
            trace = self.turns.start(request.prompt, request.env)
            self.scheduler.add(Sequence(ids=trace.ids, prompt_len=trace.prompt_len, env=trace.env, index=index, seed=seed))
