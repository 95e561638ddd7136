"""The report: score tables from the evaluate stage's summary, its figures (PNG, matplotlib's Agg canvas), and report.md."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The Figure API draws on the Agg canvas without pyplot: no display and no global figure state,
# which matters because the pipeline may build a report from a worker thread.
from matplotlib.figure import Figure

from distill.evaluate import Score, Summary

FIGURES = {"scores": "report-scores.png", "curves": "report-curves.png"}
Curves = dict[str, tuple[list[int], list[float]]]


@dataclass(frozen=True)
class ReportInputs:
    """What the report is built from, besides the scores: each read off an artifact's lineage record."""

    domains: list[str]
    rl: dict[str, dict]  # domain -> the train_expert record's metrics
    warmup: dict[str, dict]  # domain -> the dsa_warmup record's metrics
    curves: Curves  # label -> (steps, loss) of every trained model
    mixture_id: str
    mixture_rows: int
    decontam_removed: int
    kd_loss: str
    index_topk: int
    attention: dict[str, str]  # model label -> the attention it ran with, e.g. "dsa (deepseek_v3 converted)"
    mixed_rl: dict | None = None  # the mixed_rl record's metrics, when the run has the stage


LABELS = {"student": "student", "opd": "on-policy distillation (OPD)", "mixed_rl": "mixed RL"}
SHORT = {"student": "student", "opd": "student + OPD", "mixed_rl": "student + mixed RL"}


def _pct(score: Score | None) -> str:
    return "–" if score is None else f"{100 * score.accuracy:.0f}"


def score_table(summary: Summary, domains: Sequence[str]) -> list[dict[str, str]]:
    """Rows of "accuracy ± 95% CI" per (model, domain); an expert is scored on its own domain only, starred."""
    models = [("base", "base", None), *[(f"expert:{d}", "expert", d) for d in domains], ("student", "student", None),
              *[(SHORT[m], m, None) for m in ("opd", "mixed_rl") if summary.get(m, domains[0])], ("baseline", "baseline", None)]
    rows = []
    for label, model, own in models:
        row = {"model": label}
        for d in domains:
            s = summary.get(model, d) if own in (None, d) else None
            row[d] = "–" if s is None else f"{100 * s.accuracy:.0f}{'*' if own else ''} ±{100 * s.ci95:.0f}"
        rows.append(row)
    return rows


def dsa_table(summary: Summary, warmup: Mapping[str, dict]) -> list[dict[str, str]]:
    """Per domain: indexer recall before/after warm-up, and the expert's accuracy sparse vs dense."""
    rows = []
    for d, w in warmup.items():
        if w.get("attention") == "dense":  # an architecture without an indexer: nothing warmed up
            continue
        sparse, dense = summary.get("expert", d), summary.get("expert", d, "dense")
        rows.append(
            {
                "domain": d,
                "recall before": _recall(w["recall_before"]),
                "recall after": _recall(w["recall_after"]),
                "sparse acc": _pct(sparse),
                "dense acc": _pct(dense),
                "sparse - dense": f"{100 * (sparse.accuracy - dense.accuracy):+.0f}",
            }
        )
    return rows


def calls_table(summary: Summary, domains: Sequence[str]) -> list[dict[str, str]]:
    """Tool-use domains: accuracy by the number of tool calls the task's reference solution makes."""
    rows = []
    for d in domains:
        for n in sorted({s.calls for s in summary.scores if s.domain == d and s.calls is not None}):
            row = {"domain": d, "tool calls needed": str(n), "tasks": str(summary.get("expert", d, calls=n).tasks)}
            rows.append(row | {m: _pct(summary.get(m, d, calls=n)) for m in ("expert", "student", "baseline")})
    return rows


def rl_table(experts: Mapping[str, dict]) -> list[dict[str, str]]:
    """Per domain whose expert ran GRPO: held-out accuracy after SFT and after SFT + GRPO, greedy and sampled pass@1 (dense, before warm-up)."""
    rows = []
    for d, m in experts.items():
        if "heldout_rl" not in m:
            continue
        rewards = m["rl_rewards"]
        rows.append(
            {
                "domain": d,
                "SFT": f"{100 * m['heldout_sft']:.1f}",
                "SFT + GRPO": f"{100 * m['heldout_rl']:.1f}",
                # Paired 95% intervals: the same held-out tasks before and after GRPO.
                "change": f"{100 * (m['heldout_rl'] - m['heldout_sft']):+.1f} ±{100 * m['heldout_rl_ci']:.1f}",
                "sampled pass@1: SFT → SFT + GRPO": f"{100 * m['heldout_sft_sampled']:.1f} → {100 * m['heldout_rl_sampled']:.1f}",
                "pass@1 change": f"{100 * (m['heldout_rl_sampled'] - m['heldout_sft_sampled']):+.1f} ±{100 * m['heldout_rl_sampled_ci']:.1f}",
                "GRPO rounds": str(len(rewards)),
                # Each round draws prompts it has not trained on, so this is a held-out trend too.
                "round reward, first → last": f"{rewards[0]:.3f} → {rewards[-1]:.3f}",
            }
        )
    return rows


def _recall(value: float) -> str:
    # NaN: no held-out query saw more than index_topk tokens, so attention there is dense anyway.
    return "n/a (no query sees > k tokens)" if math.isnan(value) else f"{value:.3f}"


def to_markdown(rows: list[dict[str, str]]) -> str:
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r[h] for h in headers) + " |" for r in rows]
    return "\n".join(lines)


def acceptance_table(summary: Summary, domains: Sequence[str]) -> list[dict[str, str]]:
    """The student against each expert on its domain (target ≥ 0.95×) and against the no-expert baseline on average."""
    rows = []
    for d in domains:
        expert, student = summary.get("expert", d).accuracy, summary.get("student", d).accuracy
        ratio = student / expert if expert else 0.0
        rows.append(
            {
                "domain": d,
                "expert": f"{100 * expert:.0f}",
                "student": f"{100 * student:.0f}",
                "student dense": _pct(summary.get("student", d, "dense")),
                "student / expert": "– (the expert scores 0)" if not expert else f"{ratio:.2f} {'ok' if ratio >= 0.95 else 'below 0.95'}",
                "baseline": _pct(summary.get("baseline", d)),
            }
        )
    s, b = (sum(summary.get(m, d).accuracy for d in domains) / len(domains) for m in ("student", "baseline"))
    diff, ci = summary.student_minus_baseline, summary.student_minus_baseline_ci95
    rows.append(
        {
            "domain": "average",
            "expert": "",
            "student": f"{100 * s:.1f}",
            "student dense": "",
            "student / expert": "",
            "baseline": f"{100 * b:.1f}; student - baseline {100 * diff:+.1f} (paired 95% CI ±{100 * ci:.1f}): "
            + ("beats it" if diff > ci else "does not beat it"),
        }
    )
    return rows


def after_table(summary: Summary) -> list[dict[str, str]]:
    """Each stage after distillation against the model it started from, per domain and on average:
    accuracies and the change ± paired 95% CI."""
    rows = []
    for c in summary.changes:
        domains = [x.domain for x in summary.changes if x.model == c.model and x.domain != "average"] if c.domain == "average" else [c.domain]
        before, after = (sum(summary.get(m, d).accuracy for d in domains) / len(domains) for m in (c.before, c.model))
        rows.append({
            "stage": LABELS[c.model], "against": SHORT[c.before], "domain": c.domain, "before": f"{100 * before:.1f}", "after": f"{100 * after:.1f}",
            "change (paired 95% CI)": f"{100 * c.diff:+.1f} ±{100 * c.ci95:.1f}"
            + (" worse" if c.diff < -c.ci95 else " better" if c.diff > c.ci95 else ""),
        })
    return rows


def forgetting(summary: Summary) -> str:
    """The forgetting check: mixed RL against the distilled student, per domain."""
    rows = [c for c in summary.changes if (c.model, c.before) == ("mixed_rl", "student") and c.domain != "average"]
    if not rows:
        return ""
    worse = [c.domain for c in rows if c.diff < -c.ci95]
    verdict = f"below it beyond the paired 95% CI on {', '.join(worse)}" if worse else "no domain below it beyond its paired 95% CI"
    return f"Forgetting check, mixed RL against the distilled student: {verdict}.\n\n"


def rewards(metrics: Mapping[str, Any] | None) -> str:
    """Mixed RL's mean verifier reward per domain, first round -> last (of the rounds that drew that domain)."""
    if not metrics:
        return ""
    parts = []
    for key, values in sorted(metrics.items()):
        domain = key.removeprefix("reward_").removesuffix("_curve")
        if key == f"reward_{domain}_curve" and (drawn := [v for v in values if v is not None]):
            parts.append(f"{domain} {drawn[0]:.2f} -> {drawn[-1]:.2f}")
    return f"Mixed RL reward per domain, first round -> last: {', '.join(parts)}.\n\n" if parts else ""


def bar_chart(summary: Summary, domains: Sequence[str], path: Path) -> None:
    """Per domain: base, the domain's expert, the student sparse and dense, the baseline; 95% CI whiskers."""
    series = {
        "base": ("base", "sparse"),
        "expert (own domain)": ("expert", "sparse"),
        "student": ("student", "sparse"),
        "student, dense attention": ("student", "dense"),
        **{SHORT[m]: (m, "sparse") for m in ("opd", "mixed_rl") if summary.get(m, domains[0])},
        "baseline (seed data only)": ("baseline", "sparse"),
    }
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for i, (label, (model, attention)) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(domains))]
        scores = [summary.get(model, d, attention) for d in domains]  # type: ignore[arg-type]
        ax.bar(xs, [100 * s.accuracy for s in scores], width, yerr=[100 * s.ci95 for s in scores], capsize=2, label=label)
    ax.set_xticks(range(len(domains)), list(domains))
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 105)
    # Below the axes: inside, it would cover the tallest bars.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=len(series))
    ax.set_title("Accuracy per domain (95% CI)")
    _save(fig, path)


def curves_chart(curves: dict[str, tuple[list[int], list[float]]], path: Path) -> None:
    """Training loss against step, one line per trained model (and loss term), log scale."""
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    for label, (steps, values) in curves.items():
        ax.plot(steps, values, label=label, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7, ncols=2)
    ax.set_title("Training curves per stage")
    _save(fig, path)


def _save(fig: Figure, path: Path) -> None:
    # Written under a temporary name and renamed: a reader never sees half a PNG.
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_report(directory: Path, summary: Summary, inputs: ReportInputs) -> str:
    """Write report.md and its figures into `directory`; returns the markdown (without the figure links)."""
    domains = inputs.domains
    bar_chart(summary, domains, directory / FIGURES["scores"])
    curves_chart(inputs.curves, directory / FIGURES["curves"])
    calls_rows, rl_rows = calls_table(summary, domains), rl_table(inputs.rl)
    calls = f"Tool-use tasks by the number of tool calls their reference solution makes: held-out accuracy (%).\n\n{to_markdown(calls_rows)}\n\n" if calls_rows else ""
    rl = (
        "Expert RL (GRPO on the prompts split, verifier reward): held-out accuracy (%) before and after, dense attention; greedy, and pass@1 "
        "of samples per task drawn with the generate stage's sampling; changes ± paired 95% CI.\n\n"
        f"{to_markdown(rl_rows)}\n\n"
        if rl_rows
        else ""
    )
    after_rows = after_table(summary)
    after = (
        "After distillation: each stage against the student it started from, held-out accuracy (%) on the same tasks.\n\n"
        f"{to_markdown(after_rows)}\n\n{forgetting(summary)}{rewards(inputs.mixed_rl)}"
        if after_rows
        else ""
    )
    dsa_rows = dsa_table(summary, inputs.warmup)
    dsa = (
        f"DSA indexer warm-up: recall (share of dense attention mass inside the top-{inputs.index_topk}) and each expert's own-domain "
        f"accuracy with sparse vs dense attention.\n\n{to_markdown(dsa_rows)}\n\n"
        if dsa_rows
        else ""
    )
    text = (
        "# Distillery run\n\n"
        f"Held-out accuracy (%) ± 95% CI; `*` marks an expert on its own domain. `baseline`: the student's budget on the seed data only.\n\n"
        f"{to_markdown(score_table(summary, domains))}\n\n"
        f"Student vs experts (target: ≥ 0.95 × the expert on its domain) and vs the no-expert baseline; "
        f"student KD: `{inputs.kd_loss}`.\n\n{to_markdown(acceptance_table(summary, domains))}\n\n"
        f"{after}{calls}{rl}"
        f"Attention each model ran with: {', '.join(f'{name} {kind}' for name, kind in inputs.attention.items())}.\n\n"
        f"{dsa}"
        f"Student training data: `{inputs.mixture_id}` ({inputs.mixture_rows} rows; {inputs.decontam_removed} dropped by decontamination "
        "against the eval prompts); trace it with `distillery lineage <id>`.\n"
    )
    figures = "\n\n".join(f"![{name}]({file})" for name, file in FIGURES.items())
    (directory / "report.md").write_text(f"{text}\n{figures}\n")
    return text
