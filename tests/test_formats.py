"""Published dataset shapes (domains/formats.py) and the math verifier's answer forms, with near misses."""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from domains import get_domain
from domains.math import extract_answer
from domains.base import SourceError
from domains.sources import SourceDomain
from flows.cli import main
from flows.config import ConfigError, load_config

# Rows as the public datasets publish them (GSM8K test 0-1, MATH, MBPP 2 and 3).
GSM8K = [
    {"question": "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends "
                 "every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in "
                 "dollars does she make every day at the farmers' market?",
     "answer": "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.\n#### 18"},
    {"question": "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?",
     "answer": "It takes 2/2=<<2/2=1>>1 bolt of white fiber\nSo the total amount of fabric is 2+1=<<2+1=3>>3 bolts of fabric\n#### 3"},
]
MATH = [
    {"problem": "What is $\\frac{1}{4} + \\frac{1}{4}$?", "solution": "We have $\\frac{1}{4} + \\frac{1}{4} = \\frac{2}{4} = \\boxed{\\frac{1}{2}}$.",
     "level": "Level 1", "type": "Prealgebra"},
    {"problem": "Solve $x - 3 > 0$.", "solution": "Adding 3 to both sides, $x > 3$, so $x \\in \\boxed{(3, \\infty)}$.",
     "level": "Level 2", "type": "Algebra"},
]
MBPP = [
    {"task_id": 2, "text": "Write a function to find the shared elements from the given two lists.",
     "code": "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(sorted(set(test_tup1) & set(test_tup2)))\r\n  return (res) ",
     "test_list": ["assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
                   "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
                   "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)"]},
    {"task_id": 3, "text": "Write a python function to identify non-prime numbers.",
     "code": "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in range(2,int(math.sqrt(n)) + 1):\r\n"
             "        if n % i == 0:\r\n            result = True\r\n    return result",
     "test_list": ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True", "assert is_not_prime(35) == True"]},
    {"task_id": 9, "text": "Write a function to compute a ratio.", "code": "def ratio(a, b):\n    return a / b",
     "test_list": ["assert math.isclose(ratio(1, 3), 0.333, rel_tol=0.01)"]},
]


@pytest.fixture
def files(tmp_path):
    gsm8k = tmp_path / "gsm8k.jsonl"
    gsm8k.write_text("".join(json.dumps(r) + "\n" for r in GSM8K))
    math = tmp_path / "math.parquet"
    pq.write_table(pa.Table.from_pylist(MATH), math)
    mbpp = tmp_path / "mbpp"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(MBPP)}).save_to_disk(str(mbpp))
    return {"gsm8k": gsm8k, "math": math, "mbpp": mbpp}


def _tasks(files, fmt: str) -> tuple[SourceDomain, list[dict]]:
    domain = SourceDomain(get_domain("code" if fmt == "mbpp" else "math"), files[fmt], None, fmt=fmt)
    return domain, domain.tasks


@pytest.mark.parametrize("fmt", ["gsm8k", "math", "mbpp"])
def test_every_published_solution_passes_its_own_verifier(files, fmt):
    domain, tasks = _tasks(files, fmt)
    assert len(tasks) == 2  # MBPP's math.isclose row cannot be judged on the host: left out
    for task in tasks:
        assert domain.verify(task, task["completion"]).ok, task


def test_gsm8k_rows(files):
    _, (janet, _) = _tasks(files, "gsm8k")
    assert json.loads(janet["meta"]) == {"answer": "18"} and "<<" not in janet["completion"]
    assert janet["prompt"].endswith("as '#### <number>'.")


@pytest.mark.parametrize(("completion", "reason"), [
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\n#### 18", "ok"),
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\n#### 18.00", "ok"),
    ("The answer is \\boxed{18}.", "ok"),
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\n#### 17", "wrong_answer"),          # right format, wrong value
    ("#### 18\nOn second thought, #### 20", "wrong_answer"),               # only the last answer counts
    ("16 - 3 - 4 = 8 eggs, 8 * 2 = 18.\n#### 18", "false_step"),          # right value through a false step
    ("She makes 18 dollars.", "no_answer"),
])
def test_gsm8k_near_misses(files, completion, reason):
    domain, (janet, _) = _tasks(files, "gsm8k")
    assert domain.verify(janet, completion).reason == reason


@pytest.mark.parametrize(("completion", "ok"), [
    ("$\\boxed{\\frac{1}{2}}$", True), ("\\boxed{0.5}", True), ("\\boxed{\\dfrac12}", True), ("#### 0.50", True),
    ("\\boxed{\\frac{2}{4}}", True), ("\\boxed{0.51}", False), ("\\boxed{\\frac{1}{3}}", False), ("\\boxed{-\\frac{1}{2}}", False),
])
def test_math_answers_compare_by_value(files, completion, ok):
    domain, (half, _) = _tasks(files, "math")
    assert json.loads(half["meta"])["answer"] == "\\frac{1}{2}"
    assert domain.verify(half, completion).ok is ok


def test_math_answers_that_are_not_numbers_compare_as_latex(files):
    domain, (_, interval) = _tasks(files, "math")
    assert domain.verify(interval, "so \\boxed{\\left(3,\\infty\\right)}").ok
    assert domain.verify(interval, "so \\boxed{[3, \\infty)}").reason == "wrong_answer"
    assert domain.verify(interval, "so \\boxed{3}").reason == "wrong_answer"


def test_an_mbpp_solution_failing_one_assert_is_rejected(files):
    domain, (shared, not_prime) = _tasks(files, "mbpp")
    assert json.loads(shared["meta"])["tests"][0].startswith("assert similar_elements(")
    # Wrong only for 35 = 5 * 7 (stops the search at 5): passes two of the three asserts.
    wrong = not_prime["completion"].replace("int(math.sqrt(n)) + 1", "int(math.sqrt(n))")
    assert domain.verify(not_prime, wrong).reason != "ok"
    assert domain.verify(not_prime, not_prime["completion"]).ok


def test_a_missing_column_names_the_file_and_the_column(tmp_path):
    path = tmp_path / "gsm8k-renamed.jsonl"
    path.write_text(json.dumps({"q": "1 + 1?", "answer": "#### 2"}) + "\n")
    with pytest.raises(SourceError, match=r"gsm8k-renamed.jsonl row 0: no column 'question' \(gsm8k needs question, answer\); columns: q, answer"):
        SourceDomain(get_domain("math"), path, None, fmt="gsm8k").tasks
    path.write_text(json.dumps({"question": "1 + 1?", "answer": "2"}) + "\n")
    with pytest.raises(SourceError, match="row 0: answer has no final '#### N' line"):
        SourceDomain(get_domain("math"), path, None, fmt="gsm8k").tasks


def test_formats_in_the_config(files, tmp_path):
    run_root = f"run_root={tmp_path / 'run'}"
    config = load_config("configs/micro.yaml", [run_root, f"prepare.sources.math={{path: {files['gsm8k']}, format: gsm8k}}"])
    assert config.prepare.sources["math"].format == "gsm8k"
    with pytest.raises(ConfigError, match="prepare.sources.code.format: gsm8k is a math dataset"):
        load_config("configs/micro.yaml", [run_root, f"prepare.sources.code={{path: {files['gsm8k']}, format: gsm8k}}"])
    with pytest.raises(ConfigError, match="the column mapping is required with format: columns"):
        load_config("configs/micro.yaml", [run_root, f"prepare.sources.math={{path: {files['gsm8k']}}}"])


def test_extract_answer_takes_the_last_form_written():
    assert extract_answer("\\boxed{1} then Answer: 2") == "2"
    assert extract_answer("Answer: 2\n#### 3") == "3"
    assert extract_answer("#### 3\nso \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("\\boxed{a{b}c} tail") == "a{b}c"
    assert extract_answer("no answer here") is None


def test_a_missing_column_fails_at_load_and_leaves_the_run_root_alone(files, tmp_path, capsys):
    renamed = tmp_path / "mbpp-renamed.parquet"
    pq.write_table(pa.Table.from_pylist([{k if k != "test_list" else "tests": v for k, v in r.items()} for r in MBPP]), renamed)
    run_root = tmp_path / "run"
    argv = ["run", "--config", "configs/micro.yaml", "--set", f"run_root={run_root}", "--set", f"prepare.sources.code={{path: {renamed}, format: mbpp}}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{renamed} has no column 'test_list' (mbpp needs text, code, test_list); columns: task_id, text, code, tests" in err
    assert not run_root.exists()
