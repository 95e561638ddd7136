"""The report: score tables from the evaluate stage's metrics, and its figures (PNG, matplotlib's Agg canvas)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

# The Figure API draws on the Agg canvas without pyplot: no display and no global figure state,
# which matters because the pipeline may build a report from a worker thread.
from matplotlib.figure import Figure


def score_table(metrics: dict[str, float], models: Sequence[str], domains: Sequence[str]) -> list[dict[str, str]]:
    """Rows of "accuracy ± 95% CI" per (model, domain); an expert's own domain is starred."""
    rows = []
    for model in models:
        row = {"model": model}
        for d in domains:
            if f"{model}|{d}" not in metrics:
                row[d] = "–"  # not evaluated: an expert off its own domain
                continue
            acc, ci = metrics[f"{model}|{d}"], metrics[f"{model}|{d}|ci95"]
            star = "*" if model == f"expert:{d}" else ""
            row[d] = f"{100 * acc:.0f}{star} ±{100 * ci:.0f}"
        rows.append(row)
    return rows


def dsa_table(metrics: dict[str, float], warmup: dict[str, dict]) -> list[dict[str, str]]:
    """Per domain: indexer recall before/after warm-up, and the expert's accuracy sparse vs dense."""
    rows = []
    for d, w in warmup.items():
        sparse, dense = metrics[f"expert:{d}|{d}"], metrics[f"expert:{d}|{d}|dense"]
        rows.append(
            {
                "domain": d,
                "recall before": _recall(w["recall_before"]),
                "recall after": _recall(w["recall_after"]),
                "sparse acc": f"{100 * sparse:.0f}",
                "dense acc": f"{100 * dense:.0f}",
                "sparse - dense": f"{100 * (sparse - dense):+.0f}",
            }
        )
    return rows


def calls_table(metrics: dict[str, float], domains: Sequence[str]) -> list[dict[str, str]]:
    """Tool-use domains: accuracy by the number of tool calls the task's reference solution makes."""
    rows = []
    for d in domains:
        prefix = f"{d}|calls="
        for n in sorted(int(k[len(prefix) : -len("|tasks")]) for k in metrics if k.startswith(prefix) and k.endswith("|tasks")):
            row = {"domain": d, "tool calls needed": str(n), "tasks": f"{metrics[f'{prefix}{n}|tasks']:.0f}"}
            rows.append(row | {m.split(":")[0]: f"{100 * metrics[f'{m}|{d}|calls={n}']:.0f}" for m in (f"expert:{d}", "student", "baseline")})
    return rows


def rl_table(experts: dict[str, dict]) -> list[dict[str, str]]:
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


def acceptance_table(metrics: dict[str, float], domains: Sequence[str]) -> list[dict[str, str]]:
    """The student against each expert on its domain (target ≥ 0.95×) and against the no-expert baseline on average."""
    rows = []
    for d in domains:
        expert, student = metrics[f"expert:{d}|{d}"], metrics[f"student|{d}"]
        ratio = student / expert if expert else float("nan")
        rows.append(
            {
                "domain": d,
                "expert": f"{100 * expert:.0f}",
                "student": f"{100 * student:.0f}",
                "student dense": f"{100 * metrics[f'student|{d}|dense']:.0f}",
                "student / expert": f"{ratio:.2f} {'ok' if ratio >= 0.95 else 'below 0.95'}",
                "baseline": f"{100 * metrics[f'baseline|{d}']:.0f}",
            }
        )
    s, b = (sum(metrics[f"{m}|{d}"] for d in domains) / len(domains) for m in ("student", "baseline"))
    diff, ci = metrics["student-baseline"], metrics["student-baseline|ci95"]
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


def bar_chart(metrics: dict[str, float], domains: Sequence[str], path: Path) -> None:
    """Per domain: base, the domain's expert, the student sparse and dense, the baseline; 95% CI whiskers."""
    series = {
        "base": ("base|{d}", "base|{d}|ci95"),
        "expert (own domain)": ("expert:{d}|{d}", "expert:{d}|{d}|ci95"),
        "student": ("student|{d}", "student|{d}|ci95"),
        "student, dense attention": ("student|{d}|dense", "student|{d}|dense|ci95"),
        "baseline (seed data only)": ("baseline|{d}", "baseline|{d}|ci95"),
    }
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for i, (label, (acc, ci)) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(domains))]
        ys = [100 * metrics[acc.format(d=d)] for d in domains]
        errs = [100 * metrics.get(ci.format(d=d), 0.0) for d in domains]
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=label)
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
