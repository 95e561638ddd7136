from __future__ import annotations

from prefect import flow

from data.catalog import Catalog
from experts.domains import get_domain
from experts.generation import Request, generate as sample
from flows.artifacts import Progress, existing, load_model, load_rows, publish, save_rows
from flows.config import PipelineConfig, default_config
from flows.plan import outputs, plan


@flow(name="generate", log_prints=True)
def generate(domain: str, config: PipelineConfig = default_config()) -> str:
    """The domain's expert answers new prompts, several samples each, with sparse attention and its tools."""
    catalog, p = Catalog(config.run_root), plan(config)
    (item,) = outputs(p, "generate", domain)
    records = existing(catalog, [item])
    if records is None:
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
        records = [save_rows(catalog, item, rows, generated_tokens=tokens, index_topk=model.config.index_topk)]
        publish("generate", domain, records, skipped=False)
    else:
        publish("generate", domain, records, skipped=True)
    return records[0].id
