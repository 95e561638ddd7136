"""One domain's specialist: SFT from the base on the domain's seed data, then GRPO with held-out measurements around it."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerFast

from experts.heldout import EvalConfig, evaluate_model, paired_difference, pass_at_1
from experts.rl import RLConfig, train_grpo
from experts.sft import ProgressFn, TrainConfig, train_sft
from experts.snapshot import Snapshot
from generation.types import request_seed
from kernels.attention import dense_attention


def train_specialist(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    domain: str,
    seeds: Sequence[dict],
    prompts: Sequence[dict],
    evals: Sequence[dict],
    sft: TrainConfig,
    rl: RLConfig,
    *,
    seed: int,
    sft_progress: ProgressFn | None = None,
    rl_progress: ProgressFn | None = None,
    sft_snapshot: Snapshot | None = None,
    rl_snapshot: Snapshot | None = None,
) -> tuple[list[float], dict[str, Any]]:
    """Train `model` in place; returns the SFT loss per step and, when `rl.steps`, the GRPO metrics.

    GRPO samples the prompts split (new tasks, rewarded by the verifier; no reference solution is
    used). Around it the expert is measured on the held-out split, dense (the indexer is not warmed
    up yet): greedy, and pass@1 of `rl.heldout_samples` completions drawn with `rl.heldout_sampling`.
    The change gets a paired 95% interval: the same tasks before and after. The snapshots let each
    phase resume (`experts.snapshot`).
    """
    losses = train_sft(model, tokenizer, seeds, sft, seed=request_seed(seed, 0), progress=sft_progress, snapshot=sft_snapshot)
    if not rl.steps:
        return losses, {}

    sampling = rl.heldout_sampling
    greedy = EvalConfig(sampling=sampling.model_copy(update={"temperature": 0.0}), engine=rl.engine)

    def heldout() -> tuple[list[float], list[float]]:
        with dense_attention(model):
            greedy_ok = [float(r["ok"]) for r in evaluate_model(model, tokenizer, domain, evals, greedy, seed=seed)]
            sampled = pass_at_1(model, tokenizer, domain, evals, sampling, rl.engine, rl.heldout_samples, seed=seed)
        return greedy_ok, sampled

    sft_greedy, sft_sampled = heldout()
    rewards = train_grpo(model, tokenizer, prompts, rl, seed=request_seed(seed, 1), progress=rl_progress, snapshot=rl_snapshot)["reward"]
    rl_greedy, rl_sampled = heldout()
    greedy_change, greedy_ci = paired_difference({domain: rl_greedy}, {domain: sft_greedy})
    sampled_change, sampled_ci = paired_difference({domain: rl_sampled}, {domain: sft_sampled})
    print(
        f"{domain} expert: held-out accuracy SFT {fmean(sft_greedy):.3f} -> SFT+GRPO {fmean(rl_greedy):.3f} "
        f"({greedy_change:+.3f} ± {greedy_ci:.3f}, greedy), {fmean(sft_sampled):.3f} -> {fmean(rl_sampled):.3f} "
        f"({sampled_change:+.3f} ± {sampled_ci:.3f}, sampled pass@1 at T {sampling.temperature})"
    )
    return losses, {
        "rl_rewards": rewards,
        "heldout_sft": fmean(sft_greedy), "heldout_rl": fmean(rl_greedy), "heldout_rl_ci": greedy_ci,
        "heldout_sft_sampled": fmean(sft_sampled), "heldout_rl_sampled": fmean(rl_sampled), "heldout_rl_sampled_ci": sampled_ci,
    }
