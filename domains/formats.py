r"""Public datasets in their published shapes, read as task rows: no column mapping to write.

    gsm8k   math  ``question``, ``answer`` (worked solution ending ``#### N``)
    math    math  ``problem``, ``solution`` (the final answer in ``\boxed{}``)
    mbpp    code  ``text``, ``code``, ``test_list`` (asserts on the function)
    qa      search  ``question``, ``answer`` (a string or a list), over a corpus of ``id``, ``title``, ``text``
    agents  agents  ``instruction``, ``env``, ``initial_state``, ``calls`` (domains/agents.py)

Each domain reads its own shapes (`format_row` in domains/math.py and domains/code.py), so that a
domain's code identity covers them and no other domain's; this module knows only which domain and
columns each shape has. Prompts ask for the answer in the dataset's own form (``#### N``,
``\boxed{}``), which the math verifier reads; completions are the published solutions. GSM8K's
calculator annotations (``<<48/2=24>>``) are dropped from them: they are tool output, not text a
model should learn to write. Rows a format cannot use are left out, with a count: MBPP rows whose
asserts are not calls on literals (``math.isclose``, sets) cannot be judged on the host; a QA
question whose own text, searched, finds no document holding its answer has no reference trace.

A record without a column its format needs is an error naming the file, the row and the column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from domains.base import SourceError, make_task


@dataclass(frozen=True)
class Format:
    domain: str  # whose verifier judges the rows, and whose `format_row` reads them
    columns: tuple[str, ...]
    left_out: str = ""  # why `format_row` may leave a row out


FORMATS: dict[str, Format] = {
    "gsm8k": Format("math", ("question", "answer")),
    "math": Format("math", ("problem", "solution")),
    "mbpp": Format("code", ("text", "code", "test_list"), "their tests cannot be judged on the host"),
    "qa": Format("search", ("question", "answer"), "searching the question finds no document holding the answer"),
    "agents": Format("agents", ("instruction", "env", "initial_state", "calls")),
}


class FormatReader(Protocol):
    def format_row(self, fmt: str, record: dict[str, Any]) -> tuple[str, str, dict] | None:
        """(prompt, completion, meta) of one record in the published shape `fmt`, or None for a row
        that cannot be judged; raises SourceError naming what is wrong with it."""


def format_tasks(records: Sequence[dict[str, Any]], reader: FormatReader, domain: str, fmt: str, source: str) -> list[dict]:
    """Task rows for `domain` from `records` in the published shape `fmt`, each read by `reader` (the
    domain whose verifier judges them: the row shapes live beside the verifier); `source` names the file in errors."""
    spec = FORMATS[fmt]
    tasks, skipped = [], 0
    for i, record in enumerate(records):
        missing = [c for c in spec.columns if c not in record]
        if missing:
            raise SourceError(f"{source} row {i}: no column {missing[0]!r} ({fmt} needs {', '.join(spec.columns)}); "
                              f"columns: {', '.join(record)}")
        try:
            built = reader.format_row(fmt, record)
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
        print(f"{source}: {skipped} of {len(records)} {fmt} rows left out: {spec.left_out}")
    return tasks
