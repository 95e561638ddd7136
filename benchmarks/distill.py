"""Logit-level KD vs sequence-level KD alone: one student per KD loss, same verified data, same budget.

    .venv/bin/python -m benchmarks.distill --config configs/quality.yaml [--losses none forward_kl jsd] [--set key=value ...]

Runs the pipeline once (stages whose outputs exist are skipped), then the distill stage once per
KD loss (`distill.kd.loss=<loss>`, everything else from the config) and scores each student on
every domain's held-out set as the evaluate stage does. Writes its table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse

from benchmarks.record import write_section
from data import tables
from data.checkpoints import load_checkpoint
from distill.evaluate import Summary
from experts.heldout import accuracy_with_ci, evaluate_model
from flows.config import load_config
from flows.distill import distill
from flows.pipeline import pipeline
from flows.plan import plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--losses", nargs="+", default=["none", "forward_kl", "reverse_kl", "jsd"], choices=["none", "forward_kl", "reverse_kl", "jsd"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    args = parser.parse_args()

    config = load_config(args.config, args.set)
    result = pipeline(config)
    catalog = config.open_catalog()
    p = plan(config, catalog)
    summary = Summary.from_metrics(catalog.get(result["scores"]).metrics)
    expert = {d: summary.get("expert", d).accuracy for d in config.domains}
    baseline = {d: summary.get("baseline", d).accuracy for d in config.domains}
    evals = {d: tables.read_rows(catalog.resolve(catalog.get(p[("prepare", d, "eval")].id))) for d in config.domains}
    seed = config.seed_for("evaluate")

    rows = []
    for loss in args.losses:
        cfg = load_config(args.config, [*args.set, f"distill.kd.loss={loss}"])
        item = plan(cfg, catalog)[("distill", None, "model")]
        distill(cfg)
        record = catalog.get(item.id)
        seconds = record.metrics.get("seconds")
        model, tokenizer = load_checkpoint(catalog.resolve(record))
        accs = {}
        for d, tasks in evals.items():
            accs[d] = accuracy_with_ci([r["ok"] for r in evaluate_model(model, tokenizer, d, tasks, cfg.evaluate, seed=seed)])
        ratios = {d: accs[d][0] / expert[d] if expert[d] else float("nan") for d in config.domains}
        rows.append((loss, accs, min(ratios.values()), f"{seconds:.0f} s (distill stage)" if seconds else "not recorded"))
        print(loss, accs, ratios)

    kd = config.distill.kd
    doms = config.domains
    lines = [
        "| student KD loss | " + " | ".join(doms) + " | mean | min student / expert | student training time |",
        "|---|" + "---|" * (len(doms) + 3),
        "| experts (own domain) | " + " | ".join(f"{100 * expert[d]:.0f}" for d in doms) + f" | {100 * sum(expert.values()) / len(doms):.1f} | | |",
        "| baseline (seed data only) | " + " | ".join(f"{100 * baseline[d]:.0f}" for d in doms) + f" | {100 * sum(baseline.values()) / len(doms):.1f} | | |",
    ]
    for loss, accs, worst, seconds in rows:
        name = "none (sequence-level: cross-entropy on expert tokens)" if loss == "none" else f"{loss} + cross-entropy"
        cells = " | ".join(f"{100 * a:.0f} ±{100 * ci:.0f}" for a, ci in accs.values())
        lines.append(f"| {name} | {cells} | {100 * sum(a for a, _ in accs.values()) / len(accs):.1f} | {worst:.2f} | {seconds} |")
    gens = {d: catalog.get(p[("generate", d, "generations")].id).metrics for d in doms}
    k = config.teacher_logprobs.topk
    stored = " | ".join(f"{d} {gens[d].get('logprob_bytes_per_token', float('nan')):.1f}" for d in doms)
    # Where the artifacts went does not change the numbers: left out of the command shown.
    overrides = " ".join(f"--set {s}" for s in args.set if not s.startswith("run_root="))
    verified = ", ".join(f"{d} {catalog.get(p[('verify', d, 'verified')].id).rows}" for d in doms)
    body = (
        f"## Student: logit-level KD vs sequence-level KD ({args.config})\n\n"
        f"Command: `.venv/bin/python -m benchmarks.distill --config {args.config}{' ' + overrides if overrides else ''}`\n\n"
        f"One pipeline run's verified data ({verified} rows before decontamination), "
        f"one student per KD loss, each from the base with the same budget ({config.distill.steps} steps × {config.distill.batch_size}, lr {config.distill.lr}); "
        f"KD settings besides the loss: weight {kd.weight}, ce_weight {kd.ce_weight}, beta {kd.beta}, tail `{kd.tail}`, teacher top-{k}. "
        f"Held-out accuracy (%) ± 95% CI, greedy, sparse attention after the student's indexer warm-up.\n\n"
        + "\n".join(lines)
        + f"\n\nStored teacher log-probs: top-{k} token ids (int16) + log-probs (float16) per generated token = {4 * k} raw bytes; "
        f"as stored (zstd Parquet, bytes per generated token): {stored}.\n"
    )
    write_section(f"distill kd {args.config}", body)
    print(body)


if __name__ == "__main__":
    main()
