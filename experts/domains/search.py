"""Question answering over a small local corpus, with a BM25 ``search`` tool.

Each task invents its own entities from syllables ("Voltar lives in Kesh.", "Kesh is in
Drumia."), so no answer can be memorised across tasks: the model has to search. The task's meta
holds its corpus (4-9 docs: the needed facts plus distractors such as where the person was born,
or other people). Questions are one-hop ("Where does Voltar live?"), two-hop ("In which country
does Voltar live?": search Voltar -> Kesh, then search Kesh -> Drumia) or three-hop ("In which
country does Voltar's colleague live?": colleague -> their town -> its country).

Tool: search {query: str} -> the text of the best-scoring document, or "no results".

BM25 is implemented here (about 20 lines) rather than taken from ``rank_bm25`` so that rankings,
and hence the reference traces, do not depend on which optional packages are installed.

Verification rule: the completion must contain at least one well-formed call (a correct name
without searching is a guess), and the text after the last ``Answer:`` must equal the expected
answer exactly after normalisation (lowercase, punctuation and the articles a/an/the removed,
whitespace collapsed). So "Answer: Drumia." is accepted but "Answer: I think it is Drumia" is
"wrong_answer": the answer is the whole line, not something hidden in it.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter

from experts.domains.base import OK, SimEnv, Verdict, call_json, fail, final_answer, make_task, replay, trace

_WORD = re.compile(r"[a-z0-9]+")
_ARTICLES = {"a", "an", "the"}


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def normalize(answer: str) -> str:
    return " ".join(t for t in _tokens(answer) if t not in _ARTICLES)


class BM25:
    """Okapi BM25 with the non-negative (Lucene) idf."""

    def __init__(self, docs: list[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.docs = [Counter(_tokens(d)) for d in docs]
        self.lengths = [sum(tf.values()) for tf in self.docs]
        self.avgdl = sum(self.lengths) / max(len(docs), 1)
        df = Counter(t for tf in self.docs for t in tf)
        self.idf = {t: math.log((len(docs) - f + 0.5) / (f + 0.5) + 1) for t, f in df.items()}

    def scores(self, query: str) -> list[float]:
        terms = _tokens(query)
        out = []
        for tf, dl in zip(self.docs, self.lengths):
            norm = self.k1 * (1 - self.b + self.b * dl / self.avgdl)
            out.append(sum(self.idf[t] * tf[t] * (self.k1 + 1) / (tf[t] + norm) for t in terms if t in tf))
        return out


class SearchEnv(SimEnv):
    TOOLS = {"search": {"query": str}}

    def __init__(self, docs: list[str]) -> None:
        self.docs = docs
        self.index = BM25(docs)

    def _search(self, query: str) -> str:
        scores = self.index.scores(query)
        best = max(range(len(scores)), key=lambda i: scores[i], default=None)  # ties: first doc
        return "no results" if best is None or scores[best] <= 0 else self.docs[best]


_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "dr", "kr", "st", "th"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["n", "r", "l", "s", "sh", "k", "th", "m"]


def _syllable(r: random.Random) -> str:
    return r.choice(_ONSETS) + r.choice(_VOWELS)


_KINDS = {
    "person": lambda r: _syllable(r) + _syllable(r) + r.choice(_CODAS),
    "town": lambda r: _syllable(r) + r.choice(_CODAS),
    "country": lambda r: _syllable(r) + r.choice(_ONSETS) + "ia",
}


def _names(r: random.Random, kind: str, n: int, used: set[str]) -> list[str]:
    """``n`` fresh names, distinct from each other and from ``used`` (a name means one entity)."""
    out = []
    while len(out) < n:
        name = _KINDS[kind](r).capitalize()
        if name not in used:
            used.add(name)
            out.append(name)
    return out


def _make(r: random.Random) -> tuple[str, list[str], list[str], str, int]:
    """(question, docs, reference queries, answer, hops) for one task."""
    used: set[str] = set()
    person, *others = _names(r, "person", 1 + r.randint(0, 2), used)
    home, birthplace, *other_towns = _names(r, "town", 2 + len(others), used)
    c_home, c_birth, c_other = _names(r, "country", 3, used)
    docs = [f"{person} lives in {home}.", f"{person} was born in {birthplace}.",
            f"{home} is in {c_home}.", f"{birthplace} is in {c_birth}."]
    other_countries = [r.choice([c_home, c_birth, c_other]) for _ in others]
    for other, town, country in zip(others, other_towns, other_countries):
        docs += [f"{other} lives in {town}.", f"{town} is in {country}."]
    lives, born = f"{person} lives in", f"{person} was born in"
    choices = [
        (f"Where does {person} live?", [lives], home),
        (f"Where was {person} born?", [born], birthplace),
        (f"Which country is {home} in?", [f"{home} is in"], c_home),
        (f"In which country does {person} live?", [lives, f"{home} is in"], c_home),
        (f"In which country was {person} born?", [born, f"{birthplace} is in"], c_birth),
    ]
    if others:
        # Three hops: who the colleague is, where they live, which country that is.
        colleague, town = others[0], other_towns[0]
        docs.append(f"{person} works with {colleague}.")
        choices.append((f"In which country does {person}'s colleague live?", [f"{person} works with", f"{colleague} lives in", f"{town} is in"], other_countries[0]))
    r.shuffle(docs)
    question, queries, answer = r.choice(choices)
    return question, docs, queries, answer, len(queries)


class SearchDomain:
    name = "search"

    def make_tasks(self, n: int, seed: int) -> list[dict]:
        r = random.Random(seed)
        tasks = []
        for i in range(n):
            question, docs, queries, answer, hops = _make(r)
            calls = [call_json("search", query=q) for q in queries]
            completion = f" {trace(SearchEnv(docs), calls)} Answer: {answer}"
            meta = {"docs": docs, "answer": answer, "hops": hops}
            tasks.append(make_task(self.name, seed, i, f"Q: {question}\nA:", completion, meta))
        return tasks

    def verify(self, task: dict, completion: str) -> Verdict:
        """"no_tool_call" / "bad_tool_call", then "no_answer" or "wrong_answer" per the module rule."""
        bad = replay(self.environment(task), completion)
        if bad is not None:
            return bad
        answer = final_answer(completion)
        if answer is None or not normalize(answer):
            return fail("no_answer")
        return OK if normalize(answer) == normalize(json.loads(task["meta"])["answer"]) else fail("wrong_answer")

    def environment(self, task: dict) -> SearchEnv:
        return SearchEnv(json.loads(task["meta"])["docs"])
