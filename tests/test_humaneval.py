"""HumanEval: the 164 problems load from the installed package, every canonical solution
verifies, and two corrupted copies of each fail: the body replaced by ``return None``, and the
canonical solution with its result put off by one (the program runs normally, the answer is
slightly wrong)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from domains import get_domain
from domains.base import Verdict
from domains.humaneval import N_PROBLEMS, REPLAYED, HumanEvalDomain

# Appended to a completion: the entry point's result, whatever its type, comes back changed.
OFF_BY_ONE = """

def _off_by_one(r):
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float)):
        return r + 1
    if isinstance(r, (str, list, tuple)):
        return r + type(r)("x" if isinstance(r, str) else [0])
    return 0 if r is None else None


_solution = {entry_point}


def {entry_point}(*args, **kwargs):
    return _off_by_one(_solution(*args, **kwargs))
"""


@pytest.fixture(scope="module")
def domain() -> HumanEvalDomain:
    return HumanEvalDomain()


def _verify_all(domain: HumanEvalDomain, completions: list[str]) -> list[Verdict]:
    with ThreadPoolExecutor(3) as pool:
        return list(pool.map(domain.verify, domain.tasks, completions))


def test_problems_load_as_task_rows(domain: HumanEvalDomain) -> None:
    tasks = domain.tasks
    assert [t["task_id"] for t in tasks] == [f"HumanEval/{i}" for i in range(N_PROBLEMS)]
    for t in tasks:
        assert set(t) == {"task_id", "domain", "prompt", "completion", "meta"}
        assert all(isinstance(v, str) for v in t.values()) and t["domain"] == "humaneval"
        meta = json.loads(t["meta"])
        assert set(meta) == {"test", "entry_point", "calls", "replayed"} and "def check(candidate)" in meta["test"]
        assert f"def {meta['entry_point']}(" in t["prompt"]
        assert meta["replayed"] == (t["task_id"] in REPLAYED) and meta["calls"]


def test_recorded_calls_are_the_same_on_every_load(domain: HumanEvalDomain) -> None:
    """Checks that draw inputs from the global `random` (HumanEval/38, 50, 53) record the same
    calls each time: a task row that changed per load would change every identity after it."""
    assert HumanEvalDomain().tasks == domain.tasks


def test_registered_and_sampled_deterministically(domain: HumanEvalDomain) -> None:
    assert isinstance(get_domain("humaneval"), HumanEvalDomain)
    sample = domain.make_tasks(20, seed=0)
    assert sample == domain.make_tasks(20, seed=0) != domain.make_tasks(20, seed=1)
    assert len({t["task_id"] for t in sample}) == 20
    everything = domain.make_tasks(1000, seed=0)  # a fixed pool gives at most what it holds
    assert sorted(t["task_id"] for t in everything) == sorted(t["task_id"] for t in domain.tasks)


def test_canonical_solutions_pass(domain: HumanEvalDomain) -> None:
    verdicts = _verify_all(domain, [t["completion"] for t in domain.tasks])
    assert [(t["task_id"], v) for t, v in zip(domain.tasks, verdicts) if not v.ok] == []


def test_body_replaced_by_return_none_fails(domain: HumanEvalDomain) -> None:
    verdicts = _verify_all(domain, ["    return None\n"] * N_PROBLEMS)
    assert [t["task_id"] for t, v in zip(domain.tasks, verdicts) if v.ok] == []
    assert {v.reason for v in verdicts} <= {"wrong_answer", "runtime_error"}


def test_off_by_one_result_fails_as_wrong_answer(domain: HumanEvalDomain) -> None:
    completions = [t["completion"] + OFF_BY_ONE.format(entry_point=json.loads(t["meta"])["entry_point"]) for t in domain.tasks]
    verdicts = _verify_all(domain, completions)
    assert [(t["task_id"], v.reason) for t, v in zip(domain.tasks, verdicts) if v.reason != "wrong_answer"] == []


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        ("    return [\n", "syntax_error"),
        ("    while True:\n        pass\n", "timeout"),
        ("    import os\n    os.system('true')\n", "forbidden"),
    ],
)
def test_failure_reasons(completion: str, reason: str, domain: HumanEvalDomain) -> None:
    assert HumanEvalDomain(timeout_s=1.0).verify(domain.tasks[0], completion).reason == reason
