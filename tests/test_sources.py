"""Tasks from user files: Parquet, JSONL (plain and gzipped) and `datasets` directories load
into task rows through a column mapping, verify with the domain's own verifier, and bad paths,
formats or columns are reported by name."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from domains.code import CodeDomain
from domains.math import MathDomain
from domains.sources import SourceDomain, SourceError, load_tasks, read_records

RECORDS = [
    {"id": 101, "question": "Ann has 3 pens and buys 4 more. How many pens does Ann have?", "steps": "3+4=7.", "final": 7},
    {"id": 102, "question": "Bob shares 12 eggs among 4 friends. How many eggs does each get?", "steps": "12/4=3.", "final": 3},
    {"id": 103, "question": "Cal has 10 cups and loses 6. How many are left?", "steps": "10-6=4.", "final": 4},
]
COLUMNS = {"task_id": "id", "prompt": "Q: {question}\nA:", "completion": " {steps} Answer: {final}", "meta": {"answer": "final"}}
EXPECTED = [
    {"task_id": str(r["id"]), "domain": "math", "prompt": f"Q: {r['question']}\nA:",
     "completion": f" {r['steps']} Answer: {r['final']}", "meta": json.dumps({"answer": r["final"]})}
    for r in RECORDS
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text + "\n")  # a trailing blank line is allowed
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def write_saved_dataset(path: Path, records: list[dict]) -> Path:
    datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path


def write_data_dir(path: Path, records: list[dict]) -> Path:
    """A dataset as data files in a directory, the layout of a dataset repository."""
    (path / "data").mkdir(parents=True)
    write_jsonl(path / "data" / "train.jsonl", records)
    return path


WRITERS = {
    "data.parquet": write_parquet,
    "data.jsonl": write_jsonl,
    "data.jsonl.gz": write_jsonl,
    "saved": write_saved_dataset,
    "repo": write_data_dir,
}


@pytest.mark.parametrize("name", WRITERS)
def test_load_and_verify_math_tasks(name: str, tmp_path: Path) -> None:
    source = WRITERS[name](tmp_path / name, RECORDS)
    tasks = load_tasks(source, "math", COLUMNS)
    assert tasks == EXPECTED
    math = MathDomain()
    assert all(math.verify(t, t["completion"]).ok for t in tasks)
    assert [math.verify(t, " Answer: 5").reason for t in tasks] == ["wrong_answer"] * 3


def test_plain_column_names_and_default_ids(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "gsm.jsonl", [{"q": "Q: 2+2?\nA:", "a": " 2+2=4. Answer: 4", "n": "4"}])
    tasks = load_tasks(source, "math", {"prompt": "q", "completion": "a", "meta": {"answer": "n"}})
    assert tasks == [{"task_id": "math-gsm-0", "domain": "math", "prompt": "Q: 2+2?\nA:",
                      "completion": " 2+2=4. Answer: 4", "meta": '{"answer": "4"}'}]


def test_meta_columns_keep_their_json_type(tmp_path: Path) -> None:
    """A list of tests stays a list, so that the code verifier can run them."""
    record = {"spec": "add 7", "body": "def f(x):\n    return x + 7\n", "tests": ["assert f(1) == 8", "assert f(-7) == 0"]}
    source = write_parquet(tmp_path / "code.parquet", [record])
    (task,) = load_tasks(source, "code", {"prompt": "Q: {spec}\nA:\n", "completion": "body", "meta": {"tests": "tests"}})
    assert json.loads(task["meta"]) == {"tests": record["tests"]}
    assert CodeDomain().verify(task, task["completion"]).ok
    assert CodeDomain().verify(task, "def f(x):\n    return x + 6\n").reason == "wrong_answer"


def test_dataset_dict_splits(tmp_path: Path) -> None:
    path = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:2]),
                          "test": datasets.Dataset.from_list(RECORDS[2:])}).save_to_disk(str(path))
    assert load_tasks(path, "math", COLUMNS, split="test") == EXPECTED[2:]
    with pytest.raises(SourceError, match="splits: train, test"):
        read_records(path)
    with pytest.raises(SourceError, match="splits: train, test"):
        read_records(path, split="validation")


def test_source_domain(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "mine.parquet", RECORDS)
    domain = SourceDomain(MathDomain(), source, COLUMNS, name="mymath")
    tasks = domain.make_tasks(2, seed=0)
    assert tasks == domain.make_tasks(2, seed=0) and len({t["task_id"] for t in tasks}) == 2
    assert {t["task_id"] for t in domain.make_tasks(10, seed=1)} == {"101", "102", "103"}
    assert all(t["domain"] == "mymath" and domain.verify(t, t["completion"]).ok for t in tasks)
    assert domain.environment(tasks[0]) is None


def test_bad_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.parquet"
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        load_tasks(missing, "math", COLUMNS)
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        SourceDomain(MathDomain(), missing, COLUMNS)
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(SourceError, match=r"data\.csv: unsupported format"):
        read_records(tmp_path / "data.csv")


COLUMNS_THERE = "; columns: id, question, steps, final"


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({**COLUMNS, "prompt": "Q: {quest}\nA:"}, "rows row 0: no column 'quest' (for prompt)" + COLUMNS_THERE),
        ({**COLUMNS, "completion": "answer"}, "rows row 0: no column 'answer' (for completion)" + COLUMNS_THERE),
        ({**COLUMNS, "meta": {"answer": "result"}}, "rows row 0: no column 'result' (for meta.answer)" + COLUMNS_THERE),
        ({**COLUMNS, "completion": "final"}, "rows row 0: completion from 'final' is int, not a string"),
    ],
)
def test_missing_or_mistyped_column_names_it(columns: dict, message: str, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "rows.jsonl", RECORDS)
    with pytest.raises(SourceError) as e:
        load_tasks(source, "math", columns)
    assert str(e.value) == message


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"prompt": "question"}, "'completion' is required"),
        ({**COLUMNS, "answer": "final"}, "unknown fields ['answer']"),
        ({**COLUMNS, "meta": ["final"]}, "'meta' must map"),
        ({**COLUMNS, "prompt": "Q: {question\nA:"}, "prompt: bad template"),
    ],
)
def test_bad_mapping_is_reported_before_reading(columns: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="column mapping") as e:
        SourceDomain(MathDomain(), write_jsonl(tmp_path / "rows.jsonl", RECORDS), columns)
    assert message in str(e.value)


def test_bad_jsonl_line_names_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n{not json\n")
    with pytest.raises(SourceError, match=r"broken\.jsonl:2: invalid JSON"):
        read_records(path)
