from __future__ import annotations

from prefect import flow

from data.checkpoints import compute_device
from experts.model import build_model
from experts.pretrained import adopt
from experts.sft import train_sft
from experts.tokenizer import train_tokenizer
from flows.artifacts import StageRun, run_stage
from flows.config import PipelineConfig, resolve


@flow(name="base", log_prints=True)
def base(config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """Train the tokenizer and pretrain the base model on the mixture of all domains' seed data,
    or, with `model.pretrained`, adopt that checkpoint as the base (referenced, not copied)."""
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list:
        if config.model.pretrained:
            directory, tokenizer, provenance = adopt(config.model)
            return [run.save_reference("model", directory, provenance, tokenizer)]
        rows = [r for role in run.each("seed").values() for r in run.rows(role)]
        tokenizer = train_tokenizer((r["prompt"] + r["completion"] for r in rows), config.model.vocab_size)
        model = build_model(config.model, tokenizer, seed=run.seed).to(compute_device())
        losses = train_sft(model, tokenizer, rows, config.base, seed=run.seed, progress=run.progress("pretraining"), snapshot=run.snapshot("pretraining"))
        return [run.save_model("model", model, tokenizer, {"loss": losses})]

    return run_stage(config, "base", None, compute)[0].id
