from __future__ import annotations

import time
from statistics import fmean

from prefect import flow
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from distill.evaluate import evaluate_model, paired_difference
from experts.rl import sampled_scores, train_grpo
from experts.sft import train_sft
from flows.artifacts import Progress, load_model, load_rows, run_stage, save_model
from flows.config import PipelineConfig, default_config
from kernels.attention import dense_attention


@flow(name="train_expert", log_prints=True)
def train_expert(domain: str, config: PipelineConfig = default_config()) -> str:
    """Fine-tune the base model on one domain's seed data (SFT, then GRPO if `rl.steps`): that domain's specialist."""

    def compute(catalog, p, items):
        started = time.monotonic()
        model, tokenizer = load_model(catalog, p[("base", None, "model")])
        rows = load_rows(catalog, p[("prepare", domain, "seed")])
        losses = train_sft(model, tokenizer, rows, config.expert_config(domain), Progress(f"train_expert[{domain}]: SFT"))
        rl_metrics = _grpo(domain, config, catalog, p, model, tokenizer) if config.rl_config(domain).steps else {}
        return [save_model(catalog, items["model"], model, tokenizer, losses, seconds=round(time.monotonic() - started), **rl_metrics)]

    return run_stage(config, "train_expert", domain, compute)[0].id


def heldout_greedy(
    config: PipelineConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, domain: str, evals: list[dict]
) -> list[float]:
    """Per held-out task, the verifier's greedy verdict with dense attention (the indexer is not warmed up yet)."""
    eval_cfg = config.evaluate.model_copy(update={"attention": "sdpa"})
    with dense_attention(model):
        return [float(r["ok"]) for r in evaluate_model(model, tokenizer, domain, evals, eval_cfg)]


def _grpo(domain: str, config: PipelineConfig, catalog, p, model, tokenizer) -> dict:
    """GRPO in place after SFT; returns its round rewards and the held-out accuracy before and after."""
    rl = config.rl_config(domain)
    # What RL adds, measured on the held-out set before and after.
    evals = load_rows(catalog, p[("prepare", domain, "eval")])
    gen = config.generate_config(domain)
    pass1_cfg = rl.model_copy(update={"temperature": gen.temperature, "top_p": gen.top_p})

    def heldout() -> tuple[list[float], list[float]]:
        """Per held-out task: greedy verdict, and pass@1 of samples drawn as the generate stage draws them."""
        return heldout_greedy(config, model, tokenizer, domain, evals), sampled_scores(model, tokenizer, domain, evals, pass1_cfg)

    sft_greedy, sft_sampled = heldout()
    # RL samples on the prompts split: new tasks, rewarded by the verifier, no reference solutions used.
    prompts = load_rows(catalog, p[("prepare", domain, "prompts")])
    rewards = train_grpo(model, tokenizer, domain, prompts, rl, Progress(f"train_expert[{domain}]: GRPO", metric="reward"))
    rl_greedy, rl_sampled = heldout()
    # Same tasks before and after: the paired interval of the change, not two independent ones.
    greedy_change, greedy_ci = paired_difference({domain: rl_greedy}, {domain: sft_greedy})
    sampled_change, sampled_ci = paired_difference({domain: rl_sampled}, {domain: sft_sampled})
    print(
        f"train_expert[{domain}]: held-out accuracy SFT {fmean(sft_greedy):.3f} -> SFT+GRPO {fmean(rl_greedy):.3f} "
        f"({greedy_change:+.3f} ± {greedy_ci:.3f}, greedy), {fmean(sft_sampled):.3f} -> {fmean(rl_sampled):.3f} "
        f"({sampled_change:+.3f} ± {sampled_ci:.3f}, sampled pass@1 at T {gen.temperature})"
    )
    return {
        "rl_rewards": rewards,
        "heldout_sft": fmean(sft_greedy), "heldout_rl": fmean(rl_greedy), "heldout_rl_ci": greedy_ci,
        "heldout_sft_sampled": fmean(sft_sampled), "heldout_rl_sampled": fmean(rl_sampled), "heldout_rl_sampled_ci": sampled_ci,
    }
