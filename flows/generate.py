from __future__ import annotations

from prefect import flow

from experts.domains import get_domain
from experts.generation import Request, generate as sample
from flows.artifacts import Progress, load_model, load_rows, run_stage, save_rows
from flows.config import PipelineConfig, default_config


@flow(name="generate", log_prints=True)
def generate(domain: str, config: PipelineConfig = default_config()) -> str:
    """The domain's expert answers new prompts, several samples each, with sparse attention and its tools."""

    def compute(catalog, p, items):
        cfg = config.generate_config(domain)
        dom = get_domain(domain)
        model, tokenizer = load_model(catalog, p[("train_expert", domain, "model")])
        tasks = load_rows(catalog, p[("prepare", domain, "prompts")])
        jobs = [(t, k) for t in tasks for k in range(cfg.samples_per_prompt)]
        completions = sample(model, tokenizer, [Request(t["prompt"], dom.environment(t)) for t, _ in jobs], cfg, Progress(f"generate[{domain}]"))
        rows = [
            {**t, "sample": k, "completion": c.text, "finish_reason": c.finish_reason, "model_tokens": c.model_tokens, "tool_calls": c.tool_calls}
            for (t, k), c in zip(jobs, completions)
        ]
        tokens = sum(c.model_tokens for c in completions)
        return [save_rows(catalog, items["generations"], rows, generated_tokens=tokens, index_topk=model.config.index_topk)]

    return run_stage(config, "generate", domain, compute)[0].id
