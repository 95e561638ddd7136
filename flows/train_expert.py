from __future__ import annotations

from prefect import flow

from experts.rl import train_grpo
from experts.sft import train_sft
from flows.artifacts import Progress, load_model, load_rows, run_stage, save_model
from flows.config import PipelineConfig, default_config


@flow(name="train_expert", log_prints=True)
def train_expert(domain: str, config: PipelineConfig = default_config()) -> str:
    """Fine-tune the base model on one domain's seed data (SFT, then GRPO if `rl.steps`): that domain's specialist."""

    def compute(catalog, p, items):
        model, tokenizer = load_model(catalog, p[("base", None, "model")])
        rows = load_rows(catalog, p[("prepare", domain, "seed")])
        losses = train_sft(model, tokenizer, rows, config.expert_config(domain), Progress(f"train_expert[{domain}]: SFT"))
        rl = config.rl_config(domain)
        # RL samples on the prompts split: new tasks, rewarded by the verifier, no reference solutions used.
        rewards = train_grpo(model, tokenizer, domain, load_rows(catalog, p[("prepare", domain, "prompts")]), rl, Progress(f"train_expert[{domain}]: GRPO")) if rl.steps else []
        return [save_model(catalog, items["model"], model, tokenizer, losses, rl_rewards=rewards)]

    return run_stage(config, "train_expert", domain, compute)[0].id
