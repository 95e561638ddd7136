"""Corpus search: the bm25s index (domains/corpus.py) against the built-in exact BM25 loop, at 100K documents.

    .venv/bin/python -m benchmarks.search      # about 3 minutes on 2 cores; writes the "search" section of docs/benchmarks.md

Corpus: 100,000 documents of 20..200 words (uniform), words drawn from a Zipf distribution (s = 1.1)
over a 50,000-word vocabulary of made-up words of 4..9 letters (no stopwords, no one-letter words,
so both implementations tokenize alike and their rankings can be compared), seed 0. Queries: 2..5
distinct words of one random document each, 1,000 of them.

Rows: building the index (tokenize + index + save), opening it memory-mapped, and queries per
second one query at a time through `CorpusIndex.search` (how the search tool calls it), in one
batch of all queries, and through the built-in `domains.search.BM25` (the Python loop over every
document that the synthetic tasks use) on the first 20 queries. Top-10 agreement: the share of
those 20 queries whose top-10 documents are the same set in both (ties at the 10th score aside).
One thread throughout (`n_threads=1`), as the search tool runs.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.record import write_section
from domains.corpus import CorpusIndex, build_index
from domains.search import BM25

COMMAND = ".venv/bin/python -m benchmarks.search"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def corpus(documents: int, vocabulary: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    words = sorted({"".join(r.choice(LETTERS) for _ in range(r.randint(4, 9))) for _ in range(vocabulary)})
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, len(words) + 1)
    p = ranks ** -1.1
    p /= p.sum()
    rows = []
    for i in range(documents):
        picks = rng.choice(len(words), size=r.randint(20, 200), p=p)
        rows.append({"id": str(i), "title": "", "text": " ".join(words[j] for j in picks)})
    return rows


def queries(docs: list[dict], n: int, seed: int) -> list[str]:
    r = random.Random(seed + 1)
    out = []
    for _ in range(n):
        words = sorted(set(r.choice(docs)["text"].split()))
        out.append(" ".join(r.sample(words, min(len(words), r.randint(2, 5)))))
    return out


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def run(documents: int, n_queries: int, exact_queries: int) -> str:
    docs, made = _timed(lambda: corpus(documents, 50_000, seed=0))
    qs = queries(docs, n_queries, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-search-"))
    try:
        _, build = _timed(lambda: build_index(docs, tmp / "index"))
        size = sum(f.stat().st_size for f in (tmp / "index").iterdir())
        index, load = _timed(lambda: CorpusIndex(tmp / "index"))
        index.search(qs[:5], k=10)  # first-call warm-up (numba-free numpy path; page cache)
        _, one_by_one = _timed(lambda: [index.search([q], k=10) for q in qs])
        _, batched = _timed(lambda: index.search(qs, k=10))
        exact = BM25([d["text"] for d in docs])
        agree, exact_s = 0, 0.0
        for q in qs[:exact_queries]:
            scores, took = _timed(lambda q=q: exact.scores(q))
            exact_s += took
            top = {str(i) for i in np.argsort(scores)[::-1][:10] if scores[i] > 0}
            tenth = sorted(scores, reverse=True)[min(9, len(scores) - 1)]
            ours = {h["id"] for h in index.search([q], k=10)[0]}
            # A tie at the 10th score may be broken either way: compare the sets above it.
            agree += {i for i in top if scores[int(i)] > tenth} <= ours and len(ours) == len(top)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        shutil.rmtree(tmp)
    qps_one, qps_batch, qps_exact = n_queries / one_by_one, n_queries / batched, exact_queries / exact_s
    rows = [
        ("bm25s, one query a call (the search tool)", f"{qps_one:,.0f}", f"{qps_one / qps_exact:,.0f}×"),
        (f"bm25s, {n_queries:,} queries in one call", f"{qps_batch:,.0f}", f"{qps_batch / qps_exact:,.0f}×"),
        (f"built-in exact BM25 (Python loop), {exact_queries} queries", f"{qps_exact:.2f}", "1×"),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    return (
        f"## Corpus search (bm25s index, {documents:,} documents)\n\n"
        f"Command: `{COMMAND}`. Corpus and queries: see the script's docstring (made in {made:.0f} s).\n\n"
        f"| search | queries / s | vs exact loop |\n|---|---:|---:|\n{table}\n\n"
        f"Index: built in {build:.1f} s, {size / 2**20:.0f} MiB on disk, opened memory-mapped in {load:.2f} s. "
        f"Top-10 sets equal to the exact BM25's on {agree} of {exact_queries} queries. "
        f"Peak RSS of the benchmark process (corpus, exact index and all): {peak:,.0f} MiB.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--exact-queries", type=int, default=20)
    parser.add_argument("--no-record", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    args = parser.parse_args()
    body = run(args.documents, args.queries, args.exact_queries)
    print(body)
    if not args.no_record:
        write_section("search", body)


if __name__ == "__main__":
    main()
