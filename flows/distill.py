from __future__ import annotations

from prefect import flow

from data.errors import ArtifactError
from distill.mixture import mix_verified
from experts.sft import train_sft
from flows.artifacts import Progress, load_model, load_rows, run_stage, save_model, save_rows
from flows.config import PipelineConfig, default_config
from kernels.warmup import warmup_indexer


@flow(name="distill", log_prints=True)
def distill(config: PipelineConfig = default_config()) -> str:
    """Train the generalist student from the base on every expert's verified samples, then warm up its indexer."""

    def compute(catalog, p, items):
        verified = {d: load_rows(catalog, p[("verify", d, "verified")]) for d in config.domains}
        mixture = mix_verified(verified, config.seed)
        if not mixture:
            raise ArtifactError(f"no expert produced a verified sample in {config.run_root}: train the experts longer or sample more")
        mix_record = save_rows(catalog, items["mixture"], mixture, **{f"rows_{d}": len(v) for d, v in verified.items()})
        model, tokenizer = load_model(catalog, p[("base", None, "model")])
        losses = train_sft(model, tokenizer, mixture, config.distill, Progress("distill: student"))
        # The student is trained dense like the experts; its indexer needs the same warm-up before
        # it can run sparse. Few verified rows (smoke runs) leave fewer to hold out for recall.
        warm_cfg = config.dsa_warmup.model_copy(update={"eval_examples": min(config.dsa_warmup.eval_examples, len(mixture) // 2)})
        warm = warmup_indexer(model, tokenizer, mixture, warm_cfg, Progress("distill: indexer warm-up"))
        warm.pop("losses")
        return [mix_record, save_model(catalog, items["model"], model, tokenizer, losses, **warm)]

    return run_stage(config, "distill", None, compute)[-1].id
