"""The score table: every model on every domain, from the evaluate stage's metrics."""

from __future__ import annotations

from collections.abc import Sequence


def score_table(metrics: dict[str, float], models: Sequence[str], domains: Sequence[str]) -> list[dict[str, str]]:
    """Rows of "accuracy ± 95% CI" per (model, domain); an expert's own domain is starred."""
    rows = []
    for model in models:
        row = {"model": model}
        for d in domains:
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
                "recall before": f"{w['recall_before']:.3f}",
                "recall after": f"{w['recall_after']:.3f}",
                "sparse acc": f"{100 * sparse:.0f}",
                "dense acc": f"{100 * dense:.0f}",
                "sparse - dense": f"{100 * (sparse - dense):+.0f}",
            }
        )
    return rows


def to_markdown(rows: list[dict[str, str]]) -> str:
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r[h] for h in headers) + " |" for r in rows]
    return "\n".join(lines)
