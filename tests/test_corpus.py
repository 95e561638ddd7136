"""Search over a user's corpus (bm25s index, the `qa` format, the index stage) and agent tasks in JSONL."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from byo_fixtures import agent_tasks, search_corpus

from data.catalog import Catalog
from domains import get_domain
from domains.base import SourceError, call_json
from domains.corpus import CorpusIndex, build_index, indexes_in
from domains.search import BM25, CorpusEnv
from domains.sources import SourceDomain
from domains.verify import verify_rows
from flows.config import ConfigError, load_config
from flows.index import index
from flows.plan import plan
from flows.prepare import prepare

_WORDS = ["kesh", "drumia", "voltar", "river", "stone", "harbor", "lantern", "orchard", "meadow", "copper", "falcon", "willow"]


def test_bm25s_scores_equal_the_exact_bm25(tmp_path):
    """The library scores as the built-in exact BM25 (Lucene idf, k1 1.5, b 0.75) on random documents
    without stopwords or one-letter words, which the two tokenize alike."""
    r = random.Random(0)
    for trial in range(5):
        docs = [" ".join(r.choice(_WORDS) for _ in range(r.randint(2, 12))) for _ in range(r.randint(5, 40))]
        records = [{"id": str(i), "title": "", "text": d} for i, d in enumerate(docs)]
        directory = tmp_path / f"index-{trial}"
        build_index(records, directory)
        ours = CorpusIndex(directory)
        exact = BM25(docs)
        for _ in range(10):
            query = " ".join(r.sample(_WORDS, r.randint(1, 3)))
            scores = exact.scores(query)
            hits = ours.search([query], k=len(docs))[0]
            want = sorted((s for s in scores if s > 0), reverse=True)
            got = [scores[int(h["id"])] for h in hits]
            assert got == pytest.approx(want, rel=1e-5), (query, docs)


@pytest.fixture
def world(tmp_path):
    corpus, questions = search_corpus(100, seed=0)
    corpus_file = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(corpus), corpus_file)
    questions_file = tmp_path / "questions.jsonl"
    questions_file.write_text("".join(json.dumps(q) + "\n" for q in questions))
    build_index(corpus, tmp_path / "index")
    return {"corpus": corpus_file, "questions": questions_file, "index": tmp_path / "index", "rows": questions, "documents": len(corpus)}


def _qa(world, top_k: int = 1) -> SourceDomain:
    return SourceDomain(get_domain("search").with_corpus(world["index"], top_k), world["questions"], None, fmt="qa")


def test_qa_references_search_the_corpus_and_pass_their_verifier(world):
    domain = _qa(world)
    assert len(domain.tasks) == len(world["rows"])  # every question's own text finds its person's page
    for task in domain.tasks:
        assert domain.verify(task, task["completion"]).ok, task
        # The verifier the pipeline uses (get_domain, no corpus of its own) reads the index from the task's meta.
        assert get_domain("search").verify(task, task["completion"]).ok


def test_qa_near_misses(world):
    domain = _qa(world)
    task = next(t for t in domain.tasks if t["prompt"].startswith("Q: What does"))
    meta = json.loads(task["meta"])
    question = task["prompt"].removeprefix("Q: ").removesuffix("\nA:")
    env = domain.environment(task)
    call = call_json("search", query=question)
    found = f"<call>{call}</call><result>{env.call(call)}</result>"
    assert domain.verify(task, f" {found} Answer: {meta['answer'][1]}").ok  # any accepted answer
    other = next(j for j in ("baker", "potter", "tailor", "weaver") if j not in meta["answer"])
    assert domain.verify(task, f" {found} Answer: {other}").reason == "wrong_answer"
    miss = call_json("search", query="river")
    assert domain.verify(task, f" <call>{miss}</call> Answer: {meta['answer'][0]}").reason == "unretrieved_answer"
    assert domain.verify(task, f" Answer: {meta['answer'][0]}").reason == "no_tool_call"


def test_qa_questions_the_corpus_cannot_answer_are_left_out(world, capsys):
    lost = world["questions"].with_name("lost.jsonl")
    lost.write_text(json.dumps({"question": "Who painted the ceiling?", "answer": "Michelangelo"}) + "\n" + world["questions"].read_text())
    domain = SourceDomain(get_domain("search").with_corpus(world["index"], 1), lost, None, fmt="qa")
    assert len(domain.tasks) == len(world["rows"])
    assert "1 of 201 qa rows left out: searching the question finds no document holding the answer" in capsys.readouterr().out


def test_top_k_returns_that_many_documents(world):
    env = CorpusEnv(CorpusIndex(world["index"]), 3)
    assert len(env.call(call_json("search", query="town river")).split("\n")) == 3
    assert env.call(call_json("search", query="zzzz")) == "no results"


def test_corpus_errors_name_the_row_and_column(tmp_path):
    with pytest.raises(SourceError, match="corpus row 1: no column 'title'"):
        build_index([{"id": "a", "title": "A", "text": "x y"}, {"id": "b", "text": "z"}], tmp_path / "i")
    with pytest.raises(SourceError, match="row 1: document id 'a' appears twice"):
        build_index([{"id": "a", "title": "A", "text": "x y"}, {"id": "a", "title": "B", "text": "z"}], tmp_path / "j")


def test_agent_tasks_from_jsonl(tmp_path):
    rows = agent_tasks(30, seed=3)
    path = tmp_path / "agents.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    domain = SourceDomain(get_domain("agents"), path, None, fmt="agents")
    assert len(domain.tasks) == 30
    for task in domain.tasks:
        assert domain.verify(task, task["completion"]).ok
    # Near miss: the reference's effect without the lookup it rests on.
    task = next(t for t in domain.tasks if json.loads(t["meta"])["lookups"])
    changes = [c for c in json.loads(task["meta"])["lookups"]]
    skipped = task["completion"].replace(f"<call>{changes[0]}</call>", "", 1)
    assert domain.verify(task, skipped).reason in {"unread_value", "wrong_state"}


@pytest.mark.parametrize(("change", "message"), [
    ({"env": "bank"}, "env 'bank' is not one of kv, shop, calendar"),
    ({"calls": [{"tool": "get", "args": {"key": "nope"}}]}, "calls\\[0\\] .*: the kv environment refuses it \\(error: no key 'nope'\\)"),
    ({"calls": [{"tool": "fly", "args": {}}]}, "calls\\[0\\] .*unknown tool"),
    ({"expected_state": {"a": 1}}, "expected_state {'a': 1} differs from the state the calls leave"),
])
def test_bad_agent_tasks_are_refused_naming_the_row(tmp_path, change, message):
    row = {"instruction": "Copy a into b.", "env": "kv", "initial_state": {"a": 4},
           "calls": [{"tool": "get", "args": {"key": "a"}}, {"tool": "set", "args": {"key": "b", "value": 4}}]}
    path = tmp_path / "agents.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, **change}) + "\n")
    with pytest.raises(SourceError, match=f"agents.jsonl row 1: {message}"):
        SourceDomain(get_domain("agents"), path, None, fmt="agents").tasks


def test_qa_config_needs_a_corpus_with_its_columns(world, tmp_path):
    run_root = f"run_root={tmp_path / 'run'}"
    with pytest.raises(ConfigError, match="corpus: format qa needs a corpus to search"):
        load_config("configs/micro.yaml", [run_root, "domains=[search]", f"prepare.sources.search={{path: {world['questions']}, format: qa}}"])
    bad = tmp_path / "bad-corpus.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "1", "body": "x"}]), bad)
    with pytest.raises(ConfigError, match="has no column 'title' \\(a corpus needs id, title, text\\); columns: id, body"):
        load_config("configs/micro.yaml", [run_root, "domains=[search]",
                                          f"prepare.sources.search={{path: {world['questions']}, format: qa, corpus: {bad}}}"])


def test_the_index_stage_builds_once_per_corpus(world, tmp_path):
    """The index is an artifact of its own: prepare's datasets name it as their parent, and new
    questions over the same corpus reuse it."""
    source = f"prepare.sources.search={{path: {world['questions']}, format: qa, corpus: {world['corpus']}, top_k: 2}}"
    sizes = ["prepare.seed_tasks=30", "prepare.prompt_tasks=10", "prepare.eval_tasks=10"]  # of the 200 questions
    config = load_config("configs/micro.yaml", [f"run_root={tmp_path / 'run'}", "domains=[math, search]", source, *sizes])
    assert [k for k in plan(config) if k[0] == "index"] == [("index", "search", "index")]  # math has no corpus
    [index_id] = index(config)
    prepare(config)
    catalog = Catalog(config.run_root)
    record = catalog.get(index_id)
    assert record.kind == "index" and record.metrics["documents"] == world["documents"]
    seed = catalog.list(stage="prepare", domain="search")[0]
    assert seed.parents == [index_id]
    rows = pq.read_table(catalog.resolve(seed)).to_pylist()
    assert all(json.loads(r["meta"])["top_k"] == 2 for r in rows)
    # The tasks name the index by its path inside the run root: moved elsewhere, the run root still
    # answers their searches (a stage resolves the path against its own run root).
    assert {json.loads(r["meta"])["index"] for r in rows} == {record.uri}
    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)
    with pytest.raises(SourceError, match=f"corpus index {record.uri} is a path inside a run root, and none is set"):
        get_domain("search").environment(rows[0])
    # On a pool of threads, as the verify stage judges: each thread must find the index too.
    with indexes_in(moved), ThreadPoolExecutor(2) as pool:
        verified, rejected = verify_rows("search", rows, pool=pool)
    assert len(verified) == len(rows) and not rejected  # each reference's search found its answer
    (tmp_path / "run").symlink_to(moved)  # the rest of the test reads the config's run root

    fewer = world["questions"].with_name("fewer.jsonl")
    fewer.write_text("".join(world["questions"].read_text().splitlines(keepends=True)[:40]))
    again = config.model_copy(update={"prepare": config.prepare.model_copy(update={"sources": {
        "search": config.prepare.sources["search"].model_copy(update={"path": str(fewer)})}})})
    assert index(again) == [index_id]  # skipped: same corpus
    assert plan(again)[("prepare", "search", "seed")].id != seed.id
