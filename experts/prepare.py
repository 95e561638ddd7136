"""The prepare stage: per domain, seed tasks (with reference solutions), new prompts, held-out eval."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from experts.domains import get_domain

SPLITS = ("seed", "prompts", "eval")


class PrepareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed_tasks: int = Field(600, ge=1, description="tasks with reference solutions, per domain (base and expert training)")
    prompt_tasks: int = Field(200, ge=1, description="new prompts per domain for the experts to answer")
    eval_tasks: int = Field(100, ge=1, description="held-out tasks per domain")


def prepare_domain(domain_name: str, cfg: PrepareConfig, seed: int) -> dict[str, list[dict]]:
    """Three disjoint splits: no prompt of `prompts` or `eval` appears in an earlier split."""
    domain = get_domain(domain_name)
    sizes = {"seed": cfg.seed_tasks, "prompts": cfg.prompt_tasks, "eval": cfg.eval_tasks}
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for i, split in enumerate(SPLITS):
        # Over-generate so that dropping duplicates still leaves the requested count.
        candidates = domain.make_tasks(sizes[split] * 3, seed=seed * 1000 + i)
        rows = []
        for task in candidates:
            if task["prompt"] in seen:
                continue
            seen.add(task["prompt"])
            rows.append(task)
            if len(rows) == sizes[split]:
                break
        if len(rows) < sizes[split]:
            raise ValueError(f"domain {domain_name!r} produced only {len(rows)} distinct {split} tasks, {sizes[split]} requested")
        splits[split] = rows
    return splits
