from __future__ import annotations

from prefect import flow

from experts.convert import IndexerShape, is_dense_mla, is_dsa, to_dsa
from experts.warmup import warmup_indexer
from flows.artifacts import StageRun, run_stage
from flows.config import PipelineConfig, resolve


@flow(name="dsa_warmup", log_prints=True)
def dsa_warmup(domain: str, config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """Train the expert's DSA indexer toward its dense attention, main model frozen (V3.2's dense warm-up).

    A DeepseekV3 expert (dense MLA) first gets a fresh indexer (`experts.convert`), as V3.2 was made
    from V3.1-Terminus. Any other architecture has no sparse attention: it is saved as it is and runs dense.
    """
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list:
        model, tokenizer = run.model("expert")
        source = model.config.model_type
        if is_dense_mla(model):
            shape = IndexerShape(**config.model.model_dump(include=set(IndexerShape.model_fields)))
            model = to_dsa(model, shape, seed=run.seed)
            print(f"{domain} expert: DeepseekV3 converted to DSA, an indexer of {shape.index_n_heads} x {shape.index_head_dim} "
                  f"(top-{shape.index_topk}) added to each of {model.config.num_hidden_layers} layers")
        if not is_dsa(model):
            print(f"{domain} expert: {source} has no sparse attention; it runs dense in every stage")
            return [run.save_model("model", model, tokenizer, {}, attention="dense", architecture=source)]
        metrics = warmup_indexer(model, tokenizer, run.rows("seed"), config.dsa_warmup, seed=run.seed, progress=run.progress(), snapshot=run.snapshot("warmup"))
        return [run.save_model("model", model, tokenizer, {"loss": metrics.pop("losses")}, **metrics,
                               attention="dsa", architecture=source)]

    return run_stage(config, "dsa_warmup", domain, compute)[0].id
