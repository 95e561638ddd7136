from __future__ import annotations

from prefect import flow

from experts.specialist import train_specialist
from flows.artifacts import StageRun, run_stage
from flows.config import PipelineConfig, resolve


@flow(name="train_expert", log_prints=True)
def train_expert(domain: str, config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """Fine-tune the base model on one domain's seed data (SFT, then GRPO if `rl.steps`): that domain's specialist."""
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list:
        model, tokenizer = run.model("base")
        losses, metrics = train_specialist(
            model, tokenizer, domain, run.rows("seed"), run.rows("prompts"), run.rows("eval"),
            config.expert_config(domain), config.rl_config(domain),
            seed=run.seed, sft_progress=run.progress("SFT"), rl_progress=run.progress("GRPO", metric="reward"),
            sft_snapshot=run.snapshot("sft"), rl_snapshot=run.snapshot("grpo"),
        )
        return [run.save_model("model", model, tokenizer, {"loss": losses}, **metrics)]

    return run_stage(config, "train_expert", domain, compute)[0].id
