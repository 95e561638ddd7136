"""Measuring a model on a domain's tasks: completions checked by the domain's verifier, and the statistics that compare models."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from domains import get_domain
from domains.base import Verdict, split_calls
from generation.backends import generate
from generation.types import Completion, EngineConfig, InProcessEngineConfig, ProgressFn, Request, SamplingConfig


class EvalConfig(BaseModel):
    """How held-out tasks are answered: greedy by default, through an in-process engine."""

    model_config = ConfigDict(extra="forbid")

    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.0, max_new_tokens=128))
    engine: InProcessEngineConfig = Field(default_factory=InProcessEngineConfig)


def sample_verdicts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    domain_name: str,
    tasks: Sequence[dict],
    samples: int,
    sampling: SamplingConfig,
    engine: EngineConfig,
    *,
    seed: int,
    progress: ProgressFn | None = None,
) -> list[tuple[Completion, Verdict]]:
    """`samples` completions per task, task by task (task i's are items i*samples ...), each with the verifier's verdict."""
    domain = get_domain(domain_name)
    grouped = [t for t in tasks for _ in range(samples)]
    completions = generate(model, tokenizer, [Request(t["prompt"], domain.environment(t)) for t in grouped], sampling, engine, seed=seed, progress=progress)
    return [(c, domain.verify(t, c.text)) for t, c in zip(grouped, completions)]


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    domain_name: str,
    tasks: Sequence[dict],
    cfg: EvalConfig,
    *,
    seed: int,
    progress: ProgressFn | None = None,
) -> list[dict]:
    """One row per task: the completion and the verifier's verdict."""
    verdicts = sample_verdicts(model, tokenizer, domain_name, tasks, 1, cfg.sampling, cfg.engine, seed=seed, progress=progress)
    return [
        {"task_id": t["task_id"], "domain": domain_name, "completion": c.text, "ok": v.ok, "reason": v.reason}
        for t, (c, v) in zip(tasks, verdicts)
    ]


def pass_at_1(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    domain_name: str,
    tasks: Sequence[dict],
    sampling: SamplingConfig,
    engine: EngineConfig,
    samples: int,
    *,
    seed: int,
) -> list[float]:
    """Per task, the verifier's mean score over `samples` sampled completions.

    Their mean is pass@1 estimated from k samples, the way DeepSeek-R1 scores RL (greedy decoding
    is one draw of the mode: a sharper policy whose mode was already right gains nothing there).
    Sampled as the generate stage samples, it is also the expert's verified yield.
    """
    verdicts = sample_verdicts(model, tokenizer, domain_name, tasks, samples, sampling, engine, seed=seed)
    return [sum(v.score for _, v in verdicts[i * samples : (i + 1) * samples]) / samples for i in range(len(tasks))]


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
