"""On-policy distillation against more off-policy distillation, at equal student training tokens.

    .venv/bin/python -m benchmarks.opd --config configs/tiny.yaml [--set key=value ...]

The MOPD results (DeepSeek-V4; the MOPD paper on Qwen3-30B-A3B) say a distilled student gains more
from sampling itself, graded token by token by its teachers, than from more of their samples. One
run measures it here:

1. The pipeline runs (stages whose outputs exist are skipped): the distilled student, the student
   after OPD, and the evaluate stage's verdicts on both for every domain's held-out tasks. The opd
   stage records the tokens it trained on (`trained_tokens`: the student's sampled tokens, tool
   results left out).
2. The other arm continues the distilled student's off-policy distillation on the same verified
   mixture with the same loss (`distill.kd`) and optimizer (its weight decay; OPD's is 0), at
   OPD's peak learning rate, warm-up and cosine decay, for as many steps as reach OPD's token count at the distill stage's mean loss tokens per
   step (the table gives both arms' actual counts); then its indexer is warmed up on the mixture,
   as the distill stage warms up the student's.
3. That student is scored as the evaluate stage scores (greedy, sparse attention, the same tasks
   and seed; the distilled student is scored again as a check that the protocol reproduces the
   stage's verdicts), and the arms are compared with the distilled student and with each other by
   paired 95% intervals.
"""

from __future__ import annotations

import argparse
import time

from transformers import AutoTokenizer

from benchmarks.record import write_section
from data import tables
from data.checkpoints import load_checkpoint
from distill.train import train_and_warm_up
from experts.heldout import accuracy_with_ci, evaluate_model, paired_difference
from experts.pretrained import same_vocabulary
from flows.config import load_config
from flows.pipeline import pipeline
from flows.plan import plan

STUDENT, OPD, MORE = "distilled student", "+ OPD", "+ more off-policy distillation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for the run")
    args = parser.parse_args()

    config = load_config(args.config, args.set)
    if config.opd.steps == 0:
        parser.error(f"opd.steps is 0 in {args.config}: no OPD student to compare (--set opd.steps=N)")
    result = pipeline(config)
    catalog = config.open_catalog()
    p = plan(config, catalog)
    record = {name: catalog.get(p[key].id) for name, key in {STUDENT: ("distill", None, "model"), OPD: ("opd", None, "model")}.items()}
    evals = {d: tables.read_rows(catalog.resolve(catalog.get(p[("prepare", d, "eval")].id))) for d in config.domains}
    seed = config.seed_for("evaluate")

    def verdicts(model, tokenizer) -> dict[str, list[bool]]:
        """Domain -> the verifier's verdict per held-out task, as the evaluate stage scores."""
        return {d: [r["ok"] for r in evaluate_model(model, tokenizer, d, evals[d], config.evaluate, seed=seed)] for d in config.domains}

    stage_verdicts = {(r["model"], r["domain"], r["task_id"]): r["ok"] for r in tables.read_rows(catalog.resolve(catalog.get(result["scores"])))}
    oks = {name: {d: [stage_verdicts[model, d, t["task_id"]] for t in evals[d]] for d in config.domains}
           for name, model in ((STUDENT, "student"), (OPD, "opd"))}

    target = record[OPD].metrics["trained_tokens"]
    per_step = record[STUDENT].metrics["trained_tokens"] / config.distill.steps
    steps = max(1, round(target / per_step))
    cfg = config.distill.model_copy(update={"steps": steps, "lr": config.opd.lr, "warmup_steps": min(config.opd.warmup_updates, steps)})
    model, tokenizer = load_checkpoint(catalog.resolve(record[STUDENT]))
    if verdicts(model, tokenizer) != oks[STUDENT]:
        raise SystemExit("scoring the distilled student again did not reproduce the evaluate stage's verdicts: the arms would not be comparable")
    shared = config.distill.student is None or same_vocabulary(
        tokenizer, AutoTokenizer.from_pretrained(catalog.resolve(catalog.get(p[("base", None, "model")].id))))
    mixture = tables.read_rows(catalog.resolve(catalog.get(p[("mixture", None, "mixture")].id)))
    started = time.monotonic()
    curves, _ = train_and_warm_up(model, tokenizer, mixture, cfg, config.dsa_warmup, seed=config.seed_for("opd"), teacher_ids=shared)
    seconds = {STUDENT: record[STUDENT].metrics["seconds"], OPD: record[OPD].metrics["seconds"], MORE: time.monotonic() - started}
    tokens = {STUDENT: record[STUDENT].metrics["trained_tokens"], OPD: target, MORE: sum(curves["tokens"])}
    oks[MORE] = verdicts(model, tokenizer)

    doms = config.domains
    lines = [
        "| student | " + " | ".join(doms) + " | mean | trained tokens | training |",
        "|---|" + "---|" * (len(doms) + 3),
    ]
    for name in (STUDENT, OPD, MORE):
        accs = {d: accuracy_with_ci(oks[name][d]) for d in doms}
        cells = " | ".join(f"{100 * a:.1f} ±{100 * ci:.1f}" for a, ci in accs.values())
        how = f"{config.distill.steps} steps from the base" if name == STUDENT else (
            f"{config.opd.steps} rounds" if name == OPD else f"{steps} steps")
        lines.append(f"| {name} | {cells} | {100 * sum(a for a, _ in accs.values()) / len(doms):.1f} | {tokens[name]:,} | {how}, {seconds[name]:.0f} s |")
    lines += ["", "| paired difference (points, 95% CI) | " + " | ".join(doms) + " | average |", "|---|" + "---|" * (len(doms) + 1)]
    for a, b in ((OPD, STUDENT), (MORE, STUDENT), (OPD, MORE)):
        cells = []
        for scope in [*([d] for d in doms), doms]:
            diff, ci = paired_difference({d: oks[a][d] for d in scope}, {d: oks[b][d] for d in scope})
            cells.append(f"{100 * diff:+.1f} ±{100 * ci:.1f}")
        lines.append(f"| {a.removeprefix('+ ')} − {b.removeprefix('+ ')} | " + " | ".join(cells) + " |")

    overrides = " ".join(f"--set {s}" for s in args.set if not s.startswith("run_root="))
    kd = config.distill.kd
    body = (
        f"## On-policy distillation vs more off-policy distillation at equal tokens ({args.config})\n\n"
        f"Command: `.venv/bin/python -m benchmarks.opd --config {args.config}{' ' + overrides if overrides else ''}`\n\n"
        f"From the distilled student, one arm runs the opd stage ({config.opd.steps} rounds of {config.opd.prompts_per_step} prompts × "
        f"{config.opd.samples_per_prompt} samples, each domain's expert grading the student's tokens by reverse KL), the other continues "
        f"off-policy distillation on the verified mixture (loss: cross-entropy + {kd.loss} on the experts' stored top-k, batch "
        f"{cfg.batch_size}) for the steps that reach OPD's trained tokens; both at OPD's peak lr {config.opd.lr} with "
        f"{cfg.warmup_steps} warm-up updates and cosine decay, then the indexer warm-up. Held-out accuracy (%) ± 95% CI, greedy, "
        f"sparse attention, the evaluate stage's tasks and seed (its verdicts for the distilled student reproduced). "
        f"Trained tokens: positions that carried loss (the student's sampled tokens for OPD, the experts' completion tokens for "
        f"distillation; tool results in neither). Training time: the stage's (OPD includes its sampling and the teachers' forward "
        f"passes, the distilled student its {config.distill.steps} steps from the base), and this script's for the other arm.\n\n"
        + "\n".join(lines) + "\n"
    )
    write_section(f"opd vs distill {args.config}", body)
    print(body)


if __name__ == "__main__":
    main()
