"""Question answering over a small local corpus, with a BM25 ``search`` tool.

Each task invents its own entities from syllables ("Voltar lives in Kesh.", "Kesh is in
Drumia."), so no answer can be memorised across tasks: the model has to search. The task's meta
holds its corpus (4-11 docs: the needed facts plus distractors such as where the person was born,
other people, and other people born in the person's home town). Questions go forward, one to
three hops ("Where does Voltar live?"; "In which country does Voltar live?": search Voltar ->
Kesh, then Kesh -> Drumia; "In which country does Voltar's colleague live?": colleague -> their
town -> its country), or start from a town and ask about a person ("Who lives in Kesh?"; "In
which country was the person who lives in Kesh born?": Kesh -> Voltar -> their birthplace -> its
country). A backward step needs a precise query: the town alone also finds where the town is and
who was born there, so "lives in Kesh" finds Voltar and "Kesh" may not.
One task in ten is a follow-up: a second question about the same world, after the first
was answered. Its prompt shows the first exchange with its searches and results but without its
reasoning (domains/base.py `conversation`), and the model searches again for the new question.

Tool: search {query: str} -> the text of the best-scoring document, or "no results".

BM25 is implemented here (about 20 lines) rather than taken from ``rank_bm25`` so that rankings,
and hence the reference traces, do not depend on which optional packages are installed.

A user's questions over their own corpus (format ``qa``: ``question`` and ``answer``, a string
or a list of accepted answers) search a bm25s index of the corpus instead (domains/corpus.py),
named in each task's meta; the tool then answers with the ``top_k`` best documents as
"title: text" lines. Their reference trace is one search with the question as the query; a
question whose search finds no document holding an answer has no reference and is left out.

Verification rule: the completion must contain at least one well-formed call (a correct name
without searching is a guess), and the text after the last ``Answer:`` must equal the expected
answer exactly after normalisation (lowercase, punctuation and the articles a/an/the removed,
whitespace collapsed). So "Answer: Drumia." is accepted but "Answer: I think it is Drumia" is
"wrong_answer": the answer is the whole line, not something hidden in it. And the answer must be
in a document that the completion's own calls retrieve when the host replays them
("unretrieved_answer" otherwise): a right name after searches that never found it is a guess,
and ``<result>`` text the completion wrote itself counts for nothing.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter

from pathlib import Path
from typing import Any

from domains.base import OK, SimEnv, SourceError, Verdict, call_json, conversation, fail, final_answer, make_task, replay, split_calls, trace
from domains.corpus import CorpusIndex, open_index

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
    THOUGHTS = {"search": "find {query}"}

    def __init__(self, docs: list[str]) -> None:
        self.docs = docs
        self.index = BM25(docs)

    def _search(self, query: str) -> str:
        scores = self.index.scores(query)
        best = max(range(len(scores)), key=lambda i: scores[i], default=None)  # ties: first doc
        return "no results" if best is None or scores[best] <= 0 else self.docs[best]


class CorpusEnv(SimEnv):
    """The search tool over a user's indexed corpus: the `k` best documents, one "title: text" line each."""

    TOOLS = {"search": {"query": str}}
    THOUGHTS = SearchEnv.THOUGHTS

    def __init__(self, index: CorpusIndex, k: int) -> None:
        self.index, self.k = index, k

    def _search(self, query: str) -> str:
        hits = self.index.search([query], self.k)[0]
        return "\n".join(f"{h['title']}: {h['text']}" if h["title"] else h["text"] for h in hits) or "no results"


def _answers(meta: dict) -> list[str]:
    answer = meta["answer"]
    return [answer] if isinstance(answer, str) else list(answer)


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


# A question with its reference steps, each (query, the doc it must find), and its answer.
_Question = tuple[str, list[tuple[str, str]], str]


def _make(r: random.Random) -> tuple[list[str], list[_Question]]:
    """(docs, the questions one can ask of them) for one task's invented world."""
    used: set[str] = set()
    person, *others = _names(r, "person", 1 + r.randint(0, 2), used)
    home, birthplace, *other_towns = _names(r, "town", 2 + len(others), used)
    c_home, c_birth, c_other = _names(r, "country", 3, used)
    lives, born = f"{person} lives in {home}.", f"{person} was born in {birthplace}."
    home_in, birth_in = f"{home} is in {c_home}.", f"{birthplace} is in {c_birth}."
    docs = [lives, born, home_in, birth_in]
    other_countries = [r.choice([c_home, c_birth, c_other]) for _ in others]
    for other, town, country in zip(others, other_towns, other_countries):
        docs += [f"{other} lives in {town}.", f"{town} is in {country}."]
        if r.random() < 0.5:
            # Another person tied to the home town: a backward query must say "lives in", not just the town.
            docs.append(f"{other} was born in {home}.")
    to_lives, to_born = (f"{person} lives in", lives), (f"{person} was born in", born)
    to_home_in, to_birth_in = (f"{home} is in", home_in), (f"{birthplace} is in", birth_in)
    who_lives, who_born = (f"lives in {home}", lives), (f"born in {birthplace}", born)
    choices = [
        (f"Where does {person} live?", [to_lives], home),
        (f"Where was {person} born?", [to_born], birthplace),
        (f"Which country is {home} in?", [to_home_in], c_home),
        (f"In which country does {person} live?", [to_lives, to_home_in], c_home),
        (f"In which country was {person} born?", [to_born, to_birth_in], c_birth),
        (f"Who lives in {home}?", [who_lives], person),
        (f"Who was born in {birthplace}?", [who_born], person),
        (f"Where does the person born in {birthplace} live?", [who_born, to_lives], home),
        (f"In which country was the person who lives in {home} born?", [who_lives, to_born, to_birth_in], c_birth),
    ]
    if others:
        # Three hops: who the colleague is, where they live, which country that is.
        colleague, town = others[0], other_towns[0]
        works = f"{person} works with {colleague}."
        docs.append(works)
        steps = [(f"{person} works with", works), (f"{colleague} lives in", f"{colleague} lives in {town}."),
                 (f"{town} is in", f"{town} is in {other_countries[0]}.")]
        choices.append((f"In which country does {person}'s colleague live?", steps, other_countries[0]))
    r.shuffle(docs)
    return docs, choices


def _reference(env: SearchEnv, steps: list[tuple[str, str]], answer: str, where: str) -> str:
    """The reference completion of one question: its searches, each of which must find its doc, then the answer."""
    calls = [call_json("search", query=query) for query, _ in steps]
    for call, (query, doc) in zip(calls, steps):
        if (found := env.call(call)) != doc:
            raise RuntimeError(f"{where}: the reference query {query!r} finds {found!r}, not {doc!r}")
    return f" {trace(env, calls)} Answer: {answer}"


# Share of tasks that are a follow-up question: the second user turn of a conversation.
FOLLOW_UP = 0.1


class SearchDomain:
    name = "search"

    def __init__(self, corpus: Path | None = None, top_k: int = 1) -> None:
        self.corpus, self.top_k = corpus, top_k  # only the `qa` format reads them: its reference traces search the corpus

    def with_corpus(self, corpus: Path, top_k: int) -> SearchDomain:
        return SearchDomain(corpus, top_k)

    def format_row(self, fmt: str, record: dict[str, Any]) -> tuple[str, str, dict] | None:
        """A `qa` question (domains/formats.py) with a one-search reference over the corpus, or None when that search misses."""
        if self.corpus is None:
            raise SourceError("format qa needs a corpus index (prepare.sources.search.corpus)")
        question, answer = record["question"], record["answer"]
        answers = [answer] if isinstance(answer, str) else answer
        if not isinstance(question, str) or not question.strip():
            raise SourceError(f"question is {question!r}, not text")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and normalize(a) for a in answers):
            raise SourceError(f"answer is {answer!r}: expected a string or a list of strings")
        env = CorpusEnv(open_index(self.corpus), self.top_k)
        call = call_json("search", query=question)
        found = f" {normalize(env.call(call))} "
        if not any(f" {normalize(a)} " in found for a in answers):
            return None
        meta = {"answer": answers, "index": str(self.corpus), "top_k": self.top_k}
        return f"Q: {question}\nA:", f" {trace(env, [call])} Answer: {answers[0]}", meta

    def make_tasks(self, n: int, seed: int) -> list[dict]:
        """Tasks over invented worlds; a `FOLLOW_UP` share of them are a second question about the same
        world, asked after the first was answered (its answer shown without its reasoning)."""
        r = random.Random(seed)
        tasks = []
        for i in range(n):
            docs, choices = _make(r)
            env = SearchEnv(docs)
            asked = r.sample(choices, 2 if r.random() < FOLLOW_UP else 1)
            answered = [(question, _reference(env, steps, answer, f"search task {i}")) for question, steps, answer in asked]
            (question, completion), (_, steps, answer) = answered.pop(), asked[-1]
            meta = {"docs": docs, "answer": answer, "hops": len(steps)}
            tasks.append(make_task(self.name, seed, i, conversation(answered, question), completion, meta))
        return tasks

    def verify(self, task: dict, completion: str) -> Verdict:
        """"no_tool_call" / "bad_tool_call", then "no_answer", "wrong_answer" or "unretrieved_answer" per the module rule."""
        env = self.environment(task)  # stateless: the replay's environment answers the retrieval check too
        bad = replay(env, completion)
        if bad is not None:
            return bad
        answer = final_answer(completion)
        if answer is None or not normalize(answer):
            return fail("no_answer")
        if normalize(answer) not in {normalize(a) for a in _answers(json.loads(task["meta"]))}:
            return fail("wrong_answer")
        retrieved = (f" {normalize(env.call(c))} " for c in split_calls(completion))
        return OK if any(f" {normalize(answer)} " in text for text in retrieved) else fail("unretrieved_answer")

    def environment(self, task: dict) -> SearchEnv | CorpusEnv:
        meta = json.loads(task["meta"])
        if "index" in meta:
            return CorpusEnv(open_index(meta["index"]), meta["top_k"])
        return SearchEnv(meta["docs"])
