from __future__ import annotations

from prefect import flow

from distill.evaluate import EvalConfig, evaluate_model
from experts.rl import sampled_accuracy, train_grpo
from experts.sft import train_sft
from flows.artifacts import Progress, load_model, load_rows, run_stage, save_model
from flows.config import PipelineConfig, default_config
from kernels.attention import dense_attention


@flow(name="train_expert", log_prints=True)
def train_expert(domain: str, config: PipelineConfig = default_config()) -> str:
    """Fine-tune the base model on one domain's seed data (SFT, then GRPO if `rl.steps`): that domain's specialist."""

    def compute(catalog, p, items):
        model, tokenizer = load_model(catalog, p[("base", None, "model")])
        rows = load_rows(catalog, p[("prepare", domain, "seed")])
        losses = train_sft(model, tokenizer, rows, config.expert_config(domain), Progress(f"train_expert[{domain}]: SFT"))
        rl = config.rl_config(domain)
        if not rl.steps:
            return [save_model(catalog, items["model"], model, tokenizer, losses)]
        # What RL adds, measured on the held-out set before and after (dense: the indexer is not warmed up yet).
        evals = load_rows(catalog, p[("prepare", domain, "eval")])
        eval_cfg = EvalConfig(attention="sdpa", max_new_tokens=config.evaluate.max_new_tokens, max_tool_turns=config.evaluate.max_tool_turns)

        def heldout() -> float:
            with dense_attention(model):
                return sum(r["ok"] for r in evaluate_model(model, tokenizer, domain, evals, eval_cfg)) / len(evals)

        sft_score, sft_sampled = heldout(), sampled_accuracy(model, tokenizer, domain, evals, rl)
        # RL samples on the prompts split: new tasks, rewarded by the verifier, no reference solutions used.
        prompts = load_rows(catalog, p[("prepare", domain, "prompts")])
        rewards = train_grpo(model, tokenizer, domain, prompts, rl, Progress(f"train_expert[{domain}]: GRPO", metric="reward"))
        rl_score, rl_sampled = heldout(), sampled_accuracy(model, tokenizer, domain, evals, rl)
        print(
            f"train_expert[{domain}]: held-out accuracy SFT {sft_score:.3f} -> SFT+GRPO {rl_score:.3f} (greedy), "
            f"{sft_sampled:.3f} -> {rl_sampled:.3f} (sampled as in GRPO)"
        )
        return [
            save_model(
                catalog, items["model"], model, tokenizer, losses, rl_rewards=rewards,
                heldout_sft=sft_score, heldout_rl=rl_score, heldout_sft_sampled=sft_sampled, heldout_rl_sampled=rl_sampled,
            )
        ]

    return run_stage(config, "train_expert", domain, compute)[0].id
