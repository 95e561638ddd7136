"""Expert RL: each expert's held-out accuracy after SFT and after SFT + GRPO, per domain.

    .venv/bin/python -m benchmarks.rl --config configs/quality.yaml [--set rl.lr=1e-4 ...]

Runs the pipeline's own `train_expert` stage for every domain with the RL settings given (SFT is
deterministic on one machine, so the SFT half is the same model the pipeline trains), and reads the held-out
accuracy that stage measures before and after GRPO (greedy and sampled pass@1, dense attention,
the domain's eval split). The artifacts land in the config's run root, so a pipeline run with the same settings
reuses them. Writes its table into docs/benchmarks.md under a section named by the overrides.
"""

from __future__ import annotations

import argparse

from benchmarks.record import write_section
from distill.report import rl_table, to_markdown
from flows.base import base
from flows.config import load_config
from flows.plan import plan
from flows.prepare import prepare
from flows.train_expert import train_expert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. rl.steps=6")
    parser.add_argument("--domains", nargs="+", help="default: the config's domains")
    args = parser.parse_args()

    config = load_config(args.config, args.set)
    domains = args.domains or config.domains
    if any(config.rl_config(d).steps == 0 for d in domains):
        parser.error("rl.steps is 0 for some domain: pass --set rl.steps=N")
    prepare(config)
    base(config)
    catalog, p = config.open_catalog(), plan(config)
    for d in domains:
        train_expert(d, config)
    metrics = {d: catalog.get(p[("train_expert", d, "model")].id).metrics for d in domains}
    rows = rl_table(metrics)
    for row in rows:
        # The stage's own record: when a pipeline run trained the experts, they shared the cores.
        seconds = metrics[row["domain"]].get("seconds")  # absent in run roots from before the stage timed itself
        row["stage time (SFT + GRPO + held-out evals)"] = f"{seconds} s" if seconds is not None else "not recorded"
    rl_cfgs = {d: config.rl_config(d) for d in domains}
    rl = rl_cfgs[domains[0]]  # the other settings as the first domain has them
    # Where the artifacts went does not change the numbers: left out of the section's name and command.
    shown = [s for s in args.set if not s.startswith("run_root=")]
    overrides = " ".join(f"--set {s}" for s in shown)
    n_eval = {d: catalog.get(p[("prepare", d, "eval")].id).rows for d in domains}
    body = (
        f"## Expert RL: SFT vs SFT + GRPO ({' '.join([args.config, *shown])})\n\n"
        f"Command: `.venv/bin/python -m benchmarks.rl --config {args.config} {overrides}`\n\n"
        f"GRPO on each domain's prompts split (new tasks, verifier reward): rounds × prompts at peak lr {', '.join(f'{d} {c.steps} × {c.prompts_per_step} at {c.lr:g}' for d, c in rl_cfgs.items())}, "
        f"{rl.group_size} samples per prompt, "
        f"each round's samples with an advantage spent in {rl.epochs_per_step} pass(es) of {rl.minibatch_size}-sample updates, lr cosine to 0.1x "
        f"after {rl.warmup_updates} warm-up updates, clip {rl.clip_eps}, KL {rl.kl_coef} to the SFT model, negative_weight {rl.negative_weight}, "
        f"rollouts at temperature {rl.sampling.temperature}, top-p {rl.sampling.top_p}. Held-out accuracy (%), dense attention, on the eval split ({', '.join(f'{d} {n}' for d, n in n_eval.items())} tasks): "
        f"greedy, and sampled pass@1: the verifier's mean over {rl.heldout_samples} completions per task at temperature {rl.heldout_sampling.temperature}, "
        f"top-p {rl.heldout_sampling.top_p} (DeepSeek-R1's way of scoring RL; also the expert's verified yield). Changes ± paired 95% CI (the same tasks before and after). "
        f"Stage times are wall clock as the stage recorded them: in a pipeline run the four experts train at once on the same cores.\n\n"
        + to_markdown(rows)
        + "\n"
    )
    write_section(f"expert rl {args.config} {' '.join(shown)}".strip(), body)
    print(body)


if __name__ == "__main__":
    main()
