"""Agents expert: held-out greedy accuracy by task kind, after SFT and after SFT + GRPO.

    .venv/bin/python -m benchmarks.agents_kinds --config configs/tiny.yaml [--set run_root=...]

Needs a run root where `train_expert[agents]` has run. The SFT-only model is not kept by the
pipeline, so this retrains it from the run's base exactly as the stage does (SFT is bit-identical
on one machine: the script checks that its overall score equals the stage's `heldout_sft`); the
SFT + GRPO model is the stage's checkpoint. Shows where GRPO's gain comes from: which kinds of
task it repairs. Writes its table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

from benchmarks.record import write_section
from data.catalog import Catalog
from distill.evaluate import EvalConfig, evaluate_model
from distill.report import to_markdown
from experts.sft import train_sft
from flows.artifacts import load_model, load_rows
from flows.config import load_config
from flows.plan import plan
from kernels.attention import dense_attention

# Each agents template's instruction, told apart by its wording; checked in order.
KINDS = [
    ("if above / otherwise (kv)", r"is above \d+, delete it"),
    ("if fewer than / otherwise (shop)", r"^Q: If there are fewer than"),
    ("larger of two (kv)", r"to the larger of"),
    ("remove of whichever is more (shop)", r"whichever there are more of"),
    ("earliest free slot, then cancel (calendar)", r"earliest free slot"),
    ("swap (kv, 4 calls)", r"^Q: Swap"),
    ("two moves (calendar, 4 calls)", r"^Q: Move \w+ \d+ to \w+ \d+ and"),
    ("copy / move / match / clear / replace: one looked-up value", r"^Q: (Copy|Move \w to|Add as many|Remove all|Replace all)"),
    ("no lookup: set, delete, add, book, cancel, move a booking", r""),
]


def kind_of(prompt: str) -> str:
    return next(name for name, pattern in KINDS if re.search(pattern, prompt))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. run_root=runs/x")
    args = parser.parse_args()
    config = load_config(args.config, args.set)
    catalog, p = Catalog(config.run_root), plan(config)
    expert = catalog.get(p[("train_expert", "agents", "model")].id)
    if expert is None:
        parser.error(f"no agents expert in {config.run_root}: run the pipeline (or benchmarks.rl --domains agents) first")
    evals = load_rows(catalog, p[("prepare", "agents", "eval")])
    eval_cfg = EvalConfig(attention="sdpa", max_new_tokens=config.evaluate.max_new_tokens, max_tool_turns=config.evaluate.max_tool_turns)

    def by_kind(model, tokenizer) -> dict[str, list[bool]]:
        with dense_attention(model):
            rows = evaluate_model(model, tokenizer, "agents", evals, eval_cfg)
        out: dict[str, list[bool]] = defaultdict(list)
        for task, row in zip(evals, rows):
            out[kind_of(task["prompt"])].append(row["ok"])
        return out

    model, tokenizer = load_model(catalog, p[("base", None, "model")])
    train_sft(model, tokenizer, load_rows(catalog, p[("prepare", "agents", "seed")]), config.expert_config("agents"))
    sft = by_kind(model, tokenizer)
    rl = by_kind(*load_model(catalog, p[("train_expert", "agents", "model")]))
    sft_all = sum(map(sum, sft.values())) / len(evals)
    if abs(sft_all - expert.metrics["heldout_sft"]) > 1e-9:
        raise SystemExit(f"retrained SFT scores {sft_all:.3f}, the stage recorded {expert.metrics['heldout_sft']:.3f}: not the same model")
    rows = [
        {"task kind": name, "tasks": str(len(sft[name])), "SFT": f"{sum(sft[name])}", "SFT + GRPO": f"{sum(rl[name])}"}
        for name, _ in KINDS if sft[name]
    ]
    rows.append({"task kind": "all", "tasks": str(len(evals)), "SFT": f"{sum(map(sum, sft.values()))}", "SFT + GRPO": f"{sum(map(sum, rl.values()))}"})
    body = (
        f"## Agents expert by task kind ({args.config})\n\n"
        f"Command: `.venv/bin/python -m benchmarks.agents_kinds --config {args.config}`\n\n"
        f"Held-out tasks solved, greedy, dense attention, out of the agents eval split ({len(evals)} tasks), "
        f"by the SFT-only expert (retrained from the run's base; its total equals the stage's record) and by the stage's SFT + GRPO expert.\n\n"
        + to_markdown(rows)
        + "\n"
    )
    write_section(f"agents kinds {args.config}", body)
    print(body)


if __name__ == "__main__":
    main()
