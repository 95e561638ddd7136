"""What a racy checkpoint load cost an expert: SFT from the base with an untied, freshly initialised lm_head.

    .venv/bin/python -m benchmarks.untied_head --config configs/tiny.yaml --set run_root=<root> [--domains code]

Needs a run root where `train_expert[<domain>]` has run (with expert RL on, so the stage recorded
its SFT-only held-out score). Until `data/checkpoints.py` loaded one checkpoint at a time, two
`from_pretrained` calls in the pipeline's domain threads could leave a model with its tied
`lm_head` untied and reinitialised. This trains the domain's SFT expert exactly as the stage does,
but from such a base, and sets its held-out greedy accuracy beside the stage's `heldout_sft`
(the same SFT from the base as saved). Writes its table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from statistics import fmean

import torch

from benchmarks.record import write_section
from data.catalog import Catalog
from distill.report import to_markdown
from experts.sft import train_sft
from flows.artifacts import load_model, load_rows
from flows.config import PipelineConfig, load_config
from flows.plan import plan
from flows.train_expert import heldout_greedy


def untied_head_sft(config: PipelineConfig, domain: str) -> float:
    catalog, p = Catalog(config.run_root), plan(config)
    model, tokenizer = load_model(catalog, p[("base", None, "model")])
    torch.manual_seed(config.seed)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    head.weight.data.normal_(0.0, model.config.initializer_range)  # as `from_pretrained` initialises a missing weight
    model.lm_head = head
    model.config.tie_word_embeddings = False
    train_sft(model, tokenizer, load_rows(catalog, p[("prepare", domain, "seed")]), config.expert_config(domain))
    # The stage's own measurement, so the two columns differ only in the head.
    return fmean(heldout_greedy(config, model, tokenizer, domain, load_rows(catalog, p[("prepare", domain, "eval")])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. run_root=runs/x")
    parser.add_argument("--domains", nargs="+", default=["code"])
    args = parser.parse_args()

    config = load_config(args.config, args.set)
    catalog, p = Catalog(config.run_root), plan(config)
    rows = []
    for d in args.domains:
        record = catalog.get(p[("train_expert", d, "model")].id)  # raises, naming the id, if the stage has not run
        if "heldout_sft" not in record.metrics:
            parser.error(f"train_expert[{d}] ran without expert RL: no SFT-only held-out score to compare with")
        n_eval = catalog.get(p[("prepare", d, "eval")].id).rows
        rows.append(
            {
                "domain": d,
                "held-out tasks": str(n_eval),
                "SFT from the base as saved (stage's heldout_sft)": f"{100 * record.metrics['heldout_sft']:.1f}",
                "SFT from the base with an untied random lm_head": f"{100 * untied_head_sft(config, d):.1f}",
            }
        )
    body = (
        f"## SFT expert from a broken checkpoint load ({args.config})\n\n"
        f"Command: `.venv/bin/python -m benchmarks.untied_head --config {args.config} --set run_root=<root> --domains {' '.join(args.domains)}`\n\n"
        "Held-out greedy accuracy (%), dense attention, of the domain's SFT expert (the stage's settings, no GRPO) "
        "trained from the run's base, and from the same base with its tied `lm_head` replaced by an untied, freshly "
        "initialised one: what a racy `from_pretrained` left behind before checkpoint loads took a lock.\n\n"
        + to_markdown(rows)
        + "\n"
    )
    write_section(f"untied head {args.config}", body)
    print(body)


if __name__ == "__main__":
    main()
