from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from distill.train import warm_up
from experts.rl import train_grpo
from flows.artifacts import StageRun, run_stage
from flows.config import PipelineConfig, resolve


@flow(name="mixed_rl", log_prints=True)
def mixed_rl(config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """GRPO on the student over one mixture of every domain's prompts, each rewarded by its own verifier
    (V3.2's mixed RL phase, against forgetting), then its indexer warmed up again."""
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list:
        model, tokenizer = run.model("student")
        tasks = [t for role in run.each("prompts").values() for t in run.rows(role)]
        curves = train_grpo(model, tokenizer, tasks, config.mixed_rl, seed=run.seed, progress=run.progress("mixed RL", "reward"),
                            snapshot=run.snapshot("grpo"))
        create_table_artifact(
            key="mixed-rl-rewards",
            table=[{"round": i + 1, **{k.removeprefix("reward_"): v for k, v in curves.items() if k != "reward"}, "all": r}
                   for i, r in enumerate(curves["reward"])],
            description="mean verifier reward of each round's samples, per domain",
        )
        # The indexer follows the dense attention RL changed, on the prompts' reference solutions.
        warm = warm_up(model, tokenizer, tasks, config.dsa_warmup, seed=run.seed, progress=run.progress("indexer warm-up"),
                       snapshot=run.snapshot("warmup"))
        return [run.save_model("model", model, tokenizer, curves, **warm, architecture=model.config.model_type)]

    return run_stage(config, "mixed_rl", None, compute)[0].id
