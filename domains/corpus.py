"""A document corpus behind the search tool, indexed once with bm25s and read memory-mapped.

The built-in search tasks carry their few documents in each task and rank them with the small
exact BM25 in domains/search.py. A user's corpus (rows ``id``, ``title``, ``text``; Parquet,
JSONL or a datasets directory) is too large for that: bm25s keeps the scores as a sparse matrix,
so a query costs a few sparse row reads instead of a pass over every document, and its saved
arrays are memory-mapped, so every process that answers calls (generation, verification,
evaluation) shares one copy in the page cache.

An index directory holds bm25s's arrays, the corpus as Parquet (row i is document i of the index)
and ``settings.json`` (the tokenizer and BM25 parameters, so a query is tokenized the way the
documents were). The index stage (flows/index.py) builds it once per corpus content.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from domains.base import SourceError

COLUMNS = ("id", "title", "text")
CORPUS_FILE = "corpus.parquet"
SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class BM25Settings:
    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"  # the non-negative idf, as the built-in search's BM25
    stopwords: str = "en"


def _tokenize(texts: list[str], settings: BM25Settings, ids: bool):
    import bm25s  # imported here: only corpus search needs it

    return bm25s.tokenize(texts, stopwords=settings.stopwords, return_ids=ids, show_progress=False)


def check_corpus(records: list[dict[str, Any]], source: str) -> None:
    """Every row has the corpus columns and a unique id; the error names the row and column."""
    seen: set[str] = set()
    for i, record in enumerate(records):
        missing = [c for c in COLUMNS if c not in record]
        if missing:
            raise SourceError(f"{source} row {i}: no column {missing[0]!r} (a corpus needs {', '.join(COLUMNS)}); columns: {', '.join(record)}")
        doc_id = str(record["id"])
        if doc_id in seen:
            raise SourceError(f"{source} row {i}: document id {doc_id!r} appears twice")
        seen.add(doc_id)


def build_index(records: list[dict[str, Any]], directory: Path, settings: BM25Settings = BM25Settings(), source: str = "corpus") -> int:
    """Index `records` (title and text together) into `directory` (made if missing); returns the document count."""
    import bm25s
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_corpus(records, source)
    if not records:
        raise SourceError(f"{source}: the corpus has no documents")
    texts = [f"{r['title']}\n{r['text']}" if r["title"] else str(r["text"]) for r in records]
    retriever = bm25s.BM25(k1=settings.k1, b=settings.b, method=settings.method)
    retriever.index(_tokenize(texts, settings, ids=True), show_progress=False)
    directory.mkdir(parents=True, exist_ok=True)
    retriever.save(str(directory), show_progress=False)
    table = pa.table({c: [str(r[c]) for r in records] for c in COLUMNS})
    pq.write_table(table, directory / CORPUS_FILE)
    (directory / SETTINGS_FILE).write_text(json.dumps({"bm25": asdict(settings), "documents": len(records), "bm25s": bm25s.__version__}, indent=2))
    return len(records)


class CorpusIndex:
    """A saved index, memory-mapped: `search` gives the best documents for a query."""

    def __init__(self, directory: Path) -> None:
        import bm25s
        import pyarrow.parquet as pq

        if not (directory / SETTINGS_FILE).exists():
            raise FileNotFoundError(f"no corpus index in {directory} (no {SETTINGS_FILE}): run the index stage")
        saved = json.loads((directory / SETTINGS_FILE).read_text())
        self.settings = BM25Settings(**saved["bm25"])
        self.retriever = bm25s.BM25.load(str(directory), mmap=True, show_progress=False)
        self.corpus = pq.read_table(directory / CORPUS_FILE, memory_map=True)
        self.size = self.corpus.num_rows

    def search(self, queries: list[str], k: int = 1) -> list[list[dict[str, str]]]:
        """For each query, up to `k` documents (id, title, text) with a positive score, best first."""
        tokens = _tokenize(queries, self.settings, ids=False)
        rows, scores = self.retriever.retrieve(tokens, k=min(k, self.size), show_progress=False, n_threads=1)
        out = []
        for row, score in zip(rows.tolist(), scores.tolist()):
            hits = [i for i, s in zip(row, score) if s > 0]
            out.append([{c: self.corpus.column(c)[i].as_py() for c in COLUMNS} for i in hits])
        return out


_open: dict[Path, CorpusIndex] = {}
_lock = threading.Lock()  # domain branches verify from several threads
# Tasks name their index by its path inside the run root, so that a run root copied or mounted at
# another path still finds it; the stage reading the tasks says where its run root is now.
_run_root: ContextVar[Path | None] = ContextVar("corpus_run_root", default=None)


@contextmanager
def indexes_in(run_root: str | Path) -> Iterator[None]:
    """Inside the block (and the threads and tasks it starts), relative index paths are inside `run_root`."""
    token = _run_root.set(Path(run_root))
    try:
        yield
    finally:
        _run_root.reset(token)


def open_index(directory: str | Path) -> CorpusIndex:
    """The index in `directory` (relative: inside the run root of `indexes_in`), loaded once per
    process: every task of a corpus shares it."""
    path = Path(directory)
    if not path.is_absolute():
        root = _run_root.get()
        if root is None:
            raise SourceError(f"corpus index {directory} is a path inside a run root, and none is set (domains.corpus.indexes_in)")
        path = root / path
    path = path.resolve()
    with _lock:
        if path not in _open:
            _open[path] = CorpusIndex(path)
        return _open[path]
