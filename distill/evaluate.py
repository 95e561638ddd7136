"""Held-out evaluation: greedy completions, checked by each domain's verifier."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from experts.domains import get_domain
from experts.domains.base import split_calls
from experts.generation import GenerateConfig, ProgressFn, Request, generate


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(128, ge=1)
    max_tool_turns: int = Field(4, ge=0)
    batch_size: int = Field(64, ge=1)
    # Both paths attend to the same indexer top-k and give the same tokens (tests/kernels); on CPU at
    # these lengths transformers' masked-dense path is the faster one.
    attention: Literal["dsa_sparse", "sdpa"] = "sdpa"


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    domain_name: str,
    tasks: Sequence[dict],
    cfg: EvalConfig,
    progress: ProgressFn | None = None,
) -> list[dict]:
    """One row per task: the greedy completion and the verifier's verdict."""
    domain = get_domain(domain_name)
    gen_cfg = GenerateConfig(
        samples_per_prompt=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens, max_tool_turns=cfg.max_tool_turns, batch_size=cfg.batch_size,
        attention=cfg.attention,
    )
    requests = [Request(prompt=t["prompt"], env=domain.environment(t)) for t in tasks]
    completions = generate(model, tokenizer, requests, gen_cfg, progress)
    rows = []
    for task, completion in zip(tasks, completions):
        verdict = domain.verify(task, completion.text)
        rows.append({"task_id": task["task_id"], "domain": domain_name, "completion": completion.text, "ok": verdict.ok, "reason": verdict.reason})
    return rows


def accuracy_with_ci(oks: Sequence[bool]) -> tuple[float, float]:
    """Accuracy and the half-width of its 95% Wilson score interval."""
    n = len(oks)
    if n == 0:
        return 0.0, 0.0
    p = sum(oks) / n
    z = 1.96
    denom = 1 + z * z / n
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, half


def paired_difference(a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]]) -> tuple[float, float]:
    """Average over domains of a's accuracy minus b's, and the half-width of its 95% interval.

    a and b are graded on the same tasks (domain -> one verdict or score per task, same order), so the
    interval comes from the per-task differences: a task both solve, or both fail, adds no
    variance. Treating the two scores as independent samples overstates it several-fold when
    the models agree on most tasks. Normal approximation; domains weigh equally.
    """
    if a.keys() != b.keys() or not a:
        raise ValueError(f"paired_difference needs the same domains on both sides, got {sorted(a)} and {sorted(b)}")
    mean, var = 0.0, 0.0
    for d in a:
        if len(a[d]) != len(b[d]) or len(a[d]) < 2:
            raise ValueError(f"domain {d!r}: {len(a[d])} and {len(b[d])} verdicts; need the same tasks, at least 2")
        diffs = [float(x) - float(y) for x, y in zip(a[d], b[d])]
        m = sum(diffs) / len(diffs)
        mean += m / len(a)
        var += sum((x - m) ** 2 for x in diffs) / (len(diffs) - 1) / len(diffs) / len(a) ** 2
    return mean, 1.96 * math.sqrt(var)


def accuracy_by_calls(tasks: Sequence[dict], oks: Sequence[bool]) -> dict[int, tuple[float, int]]:
    """Tool-call count of each task's reference solution -> (accuracy, tasks); empty for domains without tools."""
    groups: dict[int, list[bool]] = {}
    for task, ok in zip(tasks, oks, strict=True):
        if n := len(split_calls(task["completion"])):
            groups.setdefault(n, []).append(ok)
    return {n: (sum(g) / len(g), len(g)) for n, g in sorted(groups.items())}
