"""The evaluate stage: every model on every domain's held-out tasks, as typed score rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from data import tables
from data.shards import ShardDir
from experts.heldout import EvalConfig, accuracy_by_calls, accuracy_with_ci, evaluate_model, paired_difference
from experts.sft import ProgressFn
from kernels.attention import dense_attention

Attention = Literal["sparse", "dense"]


@dataclass(frozen=True)
class Score:
    """Held-out accuracy of one model on one domain's tasks (or those whose reference makes `calls` tool calls)."""

    model: str  # base | expert | student | opd | mixed_rl | baseline
    domain: str
    accuracy: float
    ci95: float  # half-width of the 95% Wilson interval
    tasks: int
    attention: Attention = "sparse"
    calls: int | None = None


@dataclass(frozen=True)
class Target:
    """A model to score: `load` gives it, `domains` are the ones it is scored on, `dense` adds a dense-attention pass."""

    name: str
    artifact: str  # its checkpoint's id
    load: Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerFast]]
    domains: tuple[str, ...]
    dense: bool = False


@dataclass(frozen=True)
class Change:
    """`model` minus `before` on one domain's held-out tasks (or "average" over domains), with a paired 95% interval."""

    model: str
    before: str
    domain: str
    diff: float
    ci95: float


@dataclass(frozen=True)
class Summary:
    scores: list[Score]
    student_minus_baseline: float
    student_minus_baseline_ci95: float
    changes: list[Change] = dataclasses.field(default_factory=list)  # each post-training stage against the model it started from

    def get(self, model: str, domain: str, attention: Attention = "sparse", calls: int | None = None) -> Score | None:
        for s in self.scores:
            if (s.model, s.domain, s.attention, s.calls) == (model, domain, attention, calls):
                return s
        return None

    def to_metrics(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> Summary:
        return cls(
            scores=[Score(**s) for s in metrics["scores"]],
            student_minus_baseline=metrics["student_minus_baseline"],
            student_minus_baseline_ci95=metrics["student_minus_baseline_ci95"],
            changes=[Change(**c) for c in metrics.get("changes", [])],
        )


def evaluate_models(
    targets: Sequence[Target],
    evals: Mapping[str, Sequence[dict]],
    cfg: EvalConfig,
    *,
    seed: int,
    progress: Callable[[str], ProgressFn] | None = None,
    changes: Sequence[tuple[str, str]] = (),
    cells: ShardDir | None = None,
) -> tuple[list[dict], Summary]:
    """Per-task rows (model, task, completion, verdict) and the summary: accuracies, by tool calls, and student - baseline.

    An expert is scored on its own domain only (off it a specialist scored ~0 in every run measured).
    Dense passes say what sparse attention costs; for the student they separate what distillation
    taught from what its indexer warm-up got wrong. Student and baseline answer the same tasks, so
    their difference gets a paired interval, and so does each (model, before) of `changes`: a stage
    after distillation against the model it started from.

    `cells`: each (model, domain) scored is saved there as a shard, and one already there is read
    back instead of scored again (a killed stage goes on; a model whose domains are all done is not
    even loaded).
    """
    rows: list[dict] = []
    scores: list[Score] = []
    oks: dict[tuple[str, str], list[bool]] = {}
    done = {(m["model"], m["domain"]): (path, m["dense"]) for path, m in zip(cells.paths(), cells.metrics())} if cells else {}
    for target in targets:
        loaded = None
        for d in target.domains:
            tasks = evals[d]
            if (target.name, d) in done:
                path, dense = done[target.name, d]
                cell = tables.read_rows(path)
            else:
                if loaded is None:
                    loaded = target.load()
                model, tokenizer = loaded
                bar = progress(f"{target.name} on {d}") if progress else None
                scored = evaluate_model(model, tokenizer, d, tasks, cfg, seed=seed, progress=bar)
                cell = [{"model": target.name, "model_id": target.artifact, **r} for r in scored]
                dense = None
                if target.dense:
                    with dense_attention(model):
                        dense = [r["ok"] for r in evaluate_model(model, tokenizer, d, tasks, cfg, seed=seed)]
                if cells is not None:
                    cells.write(pa.Table.from_pylist(cell), {"model": target.name, "domain": d, "dense": dense})
            rows += cell
            oks[target.name, d] = [r["ok"] for r in cell]
            scores.append(Score(target.name, d, *accuracy_with_ci(oks[target.name, d]), len(tasks)))
            for n, (acc, count) in accuracy_by_calls(tasks, oks[target.name, d]).items():
                scores.append(Score(target.name, d, acc, 0.0, count, calls=n))
            if dense is not None:
                scores.append(Score(target.name, d, *accuracy_with_ci(dense), len(tasks), attention="dense"))
    domains = list(evals)
    diff, ci = paired_difference({d: oks["student", d] for d in domains}, {d: oks["baseline", d] for d in domains})
    paired = [
        Change(after, before, d, *paired_difference({x: oks[after, x] for x in scope}, {x: oks[before, x] for x in scope}))
        for after, before in changes
        for d, scope in [*((d, [d]) for d in domains), ("average", domains)]
    ]
    return rows, Summary(scores, diff, ci, paired)
