"""Which sequences run in the next step: new prompts are admitted while the cache and batch allow.

Prefill first (as nano-vllm): a step either feeds newly admitted sequences (prompts, tool results,
preempted sequences) or decodes one token for every running sequence. When decoding needs a block
and none is free, the newest running sequence gives its blocks back and waits to be prefilled
again; its own generator keeps its tokens unchanged.
"""

from __future__ import annotations

from collections import deque

from generation.engine.cache import KVCache
from generation.engine.sequence import Sequence


class Scheduler:
    def __init__(self, cache: KVCache, max_seqs: int, max_step_tokens: int) -> None:
        self.cache = cache
        self.max_seqs = max_seqs
        self.max_step_tokens = max_step_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[Sequence], bool]:
        """(sequences to run, whether this is a prefill step)."""
        batch, tokens = [], 0
        while self.waiting and len(self.running) < self.max_seqs:
            seq = self.waiting[0]
            if batch and tokens + seq.pending > self.max_step_tokens:
                break
            if not self.cache.can_grow(seq, len(seq)):
                if batch or self.running:
                    break  # finishing sequences will free blocks
                self._make_room(seq)
            self.cache.grow(seq, len(seq))
            self.running.append(self.waiting.popleft())
            batch.append(seq)
            tokens += seq.pending
        if batch:
            return batch, True
        for seq in list(self.running):  # oldest first; the newest give way
            while seq in self.running and not self.cache.can_grow(seq, len(seq)):
                self._preempt(self.running[-1])
            if seq in self.running:
                self.cache.grow(seq, len(seq))
                batch.append(seq)
        return batch, False

    def continue_later(self, seq: Sequence) -> None:
        """`seq` got tokens appended (a tool result): prefill them next, keeping its cache."""
        self.running.remove(seq)
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.cache.free(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.preemptions += 1
        self.running.remove(seq)
        self.cache.free(seq)
        self.waiting.appendleft(seq)

    def _make_room(self, seq: Sequence) -> None:
        """Nothing runs and `seq` does not fit: take the blocks of waiting sequences (they are prefilled again later)."""
        for other in reversed(self.waiting):
            if self.cache.can_grow(seq, len(seq)):
                return
            if other is not seq:
                self.cache.free(other)
        if not self.cache.can_grow(seq, len(seq)):
            raise ValueError(f"a sequence of {len(seq)} tokens does not fit in the KV cache ({self.cache.num_slots} slots): raise kv_cache_tokens")
