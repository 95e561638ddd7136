"""Decontamination: training rows whose prompt overlaps the held-out prompts in word n-grams are dropped.

A row's overlap is the share of its prompt's n-grams found in any eval prompt; it is dropped at
`min_overlap` or above. Not "any shared n-gram", the rule for natural text: these tasks are
templated, so two different tasks share most of their words ("Cancel wed at 16 and fri at 16" vs
"... at 17" share 1 of 3 8-grams), and any-overlap at n = 8 drops 15-60% of the math and code
prompts of configs/tiny.yaml while none repeats an eval prompt. Prompts, not completions:
completions share boilerplate (`call result ok result call tool set ...`) across unrelated tasks.
A prompt shorter than n words counts as one n-gram (the whole prompt), so it is caught when it
repeats exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_WORD = re.compile(r"\w+")


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams of `text` (punctuation ignored); the whole text if it is shorter."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def eval_ngrams(prompts: Iterable[str], n: int) -> set[tuple[str, ...]]:
    return set().union(*(word_ngrams(p, n) for p in prompts))


def overlap(prompt: str, banned: set[tuple[str, ...]], n: int) -> float:
    """Share of the prompt's word n-grams that are in `banned`."""
    grams = word_ngrams(prompt, n)
    return len(grams & banned) / len(grams) if grams else 0.0


def overlaps(prompts: Sequence[str], eval_prompts: Iterable[str], n: int) -> list[float]:
    """For each prompt, the share of its word n-grams that occur in any of `eval_prompts`."""
    banned = eval_ngrams(eval_prompts, n)
    return [overlap(p, banned, n) for p in prompts]
