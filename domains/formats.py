r"""Public datasets in their published shapes, read as task rows: no column mapping to write.

    gsm8k   math  ``question``, ``answer`` (worked solution ending ``#### N``)
    math    math  ``problem``, ``solution`` (the final answer in ``\boxed{}``)
    mbpp    code  ``text``, ``code``, ``test_list`` (asserts on the function)

Prompts ask for the answer in the dataset's own form (``#### N``, ``\boxed{}``), which the math
verifier reads; completions are the published solutions. GSM8K's calculator annotations
(``<<48/2=24>>``) are dropped from them: they are tool output, not text a model should learn to
write. MBPP rows whose asserts are not calls on literals (about 3%: ``math.isclose``, sets) cannot
be judged on the host and are left out, with a count.

A record without a column its format needs is an error naming the file, the row and the column.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from domains.base import SourceError, make_task
from domains.calls import CheckError, calls_from_asserts
from domains.math import last_boxed

_CALCULATOR = re.compile(r"<<[^<>]*>>")


@dataclass(frozen=True)
class Format:
    domain: str  # whose verifier judges the rows
    columns: tuple[str, ...]
    # record -> (prompt, completion, meta), or None for a row that cannot be judged
    row: Callable[[dict[str, Any]], tuple[str, str, dict] | None]


def _gsm8k(r: dict[str, Any]) -> tuple[str, str, dict]:
    solution, sep, answer = r["answer"].rpartition("####")
    if not sep or not answer.strip():
        raise SourceError(f"answer has no final '#### N' line: {r['answer'][-80:]!r}")
    prompt = f"{r['question'].strip()}\nSolve step by step, then give the final answer on its own line as '#### <number>'."
    return prompt, _CALCULATOR.sub("", r["answer"]).strip(), {"answer": answer.strip()}


def _math(r: dict[str, Any]) -> tuple[str, str, dict]:
    boxed = last_boxed(r["solution"])
    if boxed is None:
        raise SourceError(f"solution has no \\boxed{{}} answer: {r['solution'][-80:]!r}")
    prompt = f"{r['problem'].strip()}\nPut the final answer in \\boxed{{}}."
    return prompt, r["solution"].strip(), {"answer": boxed[1].strip()}


def _mbpp(r: dict[str, Any]) -> tuple[str, str, dict] | None:
    tests = [str(t) for t in r["test_list"]]
    try:
        calls_from_asserts(tests)
    except CheckError:
        return None
    prompt = f"{r['text'].strip()}\nYour code should pass these tests:\n" + "\n".join(tests) + "\n"
    return prompt, r["code"].replace("\r\n", "\n").strip() + "\n", {"tests": tests}


FORMATS: dict[str, Format] = {
    "gsm8k": Format("math", ("question", "answer"), _gsm8k),
    "math": Format("math", ("problem", "solution"), _math),
    "mbpp": Format("code", ("text", "code", "test_list"), _mbpp),
}


def format_tasks(records: Sequence[dict[str, Any]], domain: str, fmt: str, source: str) -> list[dict]:
    """Task rows for `domain` from `records` in the published shape `fmt`; `source` names the file in errors."""
    spec = FORMATS[fmt]
    tasks, skipped = [], 0
    for i, record in enumerate(records):
        missing = [c for c in spec.columns if c not in record]
        if missing:
            raise SourceError(f"{source} row {i}: no column {missing[0]!r} ({fmt} needs {', '.join(spec.columns)}); "
                              f"columns: {', '.join(record)}")
        try:
            built = spec.row(record)
        except SourceError as e:
            raise SourceError(f"{source} row {i}: {e}") from None
        if built is None:
            skipped += 1
            continue
        prompt, completion, meta = built
        task = make_task(domain, 0, i, prompt, completion, meta)
        task["task_id"] = str(record.get("task_id", record.get("id", f"{domain}-{fmt}-{i}")))
        tasks.append(task)
    if skipped:
        print(f"{source}: {skipped} of {len(records)} {fmt} rows left out: their tests cannot be judged on the host")
    return tasks
