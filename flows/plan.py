"""Every artifact a config will produce, with its identity, computed before anything runs.

Because an id depends only on (stage, domain, name, code, params, parent ids), the whole DAG's
ids follow from the config: a stage finds its inputs by id, skips itself when its outputs exist,
and a change to one domain's settings changes the ids of that branch and what depends on it only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data.lineage import artifact_id, code_version
from flows.config import PipelineConfig

STAGES = ("prepare", "base", "train_expert", "dsa_warmup", "generate", "verify", "distill", "baseline", "evaluate")
DOMAIN_STAGES = ("prepare", "train_expert", "dsa_warmup", "generate", "verify")


@dataclass(frozen=True)
class Planned:
    stage: str
    domain: str | None
    name: str
    kind: str
    params: dict[str, Any]
    parents: tuple[str, ...]
    id: str

    @property
    def uri(self) -> str:
        where = f"{self.stage}/{self.domain or 'all'}"
        if self.kind == "dataset":
            return f"datasets/{where}/{self.name}-{self.id}.parquet"
        if self.kind == "checkpoint":
            return f"checkpoints/{where}/{self.name}-{self.id}"
        return f"reports/{self.name}-{self.id}.md"


Plan = dict[tuple[str, str | None, str], Planned]


def plan(cfg: PipelineConfig) -> Plan:
    code = code_version()["source_hash"]
    out: Plan = {}

    def add(stage: str, domain: str | None, name: str, kind: str, params: dict[str, Any], parents: list[Planned]) -> Planned:
        ids = tuple(p.id for p in parents)
        item = Planned(stage, domain, name, kind, params, ids, artifact_id(stage, domain, name, code, params, list(ids)))
        out[(stage, domain, name)] = item
        return item

    seeds, prompts, evals, experts, verified = {}, {}, {}, {}, {}
    for d in cfg.domains:
        source = cfg.prepare.sources.get(d)
        params = {"domain": d, "seed": cfg.seed, **cfg.prepare_config(d).model_dump(exclude={"sources"}), "source": source and {**source.model_dump(), "sha256": source.content_hash()}}
        seeds[d] = add("prepare", d, "seed", "dataset", params, [])
        prompts[d] = add("prepare", d, "prompts", "dataset", params, [])
        evals[d] = add("prepare", d, "eval", "dataset", params, [])
    base = add("base", None, "model", "checkpoint", {"seed": cfg.seed, "model": cfg.model.model_dump(), "train": cfg.base.model_dump()}, list(seeds.values()))
    for d in cfg.domains:
        experts[d] = add("train_expert", d, "model", "checkpoint", {"seed": cfg.seed, "train": cfg.expert_config(d).model_dump(), "rl": cfg.rl_config(d).model_dump()}, [base, seeds[d], prompts[d], evals[d]])
        warmed = add("dsa_warmup", d, "model", "checkpoint", {"warmup": cfg.dsa_warmup.model_dump()}, [experts[d], seeds[d]])
        gen_params = {"seed": cfg.seed, **cfg.generate_config(d).model_dump(), "teacher_logprobs": cfg.teacher_logprobs.model_dump()}
        gens = add("generate", d, "generations", "dataset", gen_params, [warmed, prompts[d]])
        verified[d] = add("verify", d, "verified", "dataset", {}, [gens])
        add("verify", d, "rejected", "dataset", {}, [gens])
    decontam = cfg.distill.model_dump(include={"decontam_ngram", "decontam_overlap"})
    mixture = add("distill", None, "mixture", "dataset", {"seed": cfg.seed, **decontam}, [*verified.values(), *evals.values()])
    student = add("distill", None, "model", "checkpoint", {"seed": cfg.seed, "train": cfg.distill.model_dump()}, [base, mixture])
    # The reference: the student's budget on the seed data only, no expert in the loop.
    baseline = add("baseline", None, "model", "checkpoint", {"seed": cfg.seed, "train": cfg.distill.budget().model_dump(), **decontam}, [base, *seeds.values(), *evals.values()])
    models = [base, *(out[("dsa_warmup", d, "model")] for d in cfg.domains), student, baseline]
    add("evaluate", None, "scores", "dataset", cfg.evaluate.model_dump(), [*models, *evals.values()])
    return out


def outputs(p: Plan, stage: str, domain: str | None = None) -> list[Planned]:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")
    items = [item for (s, d, _), item in p.items() if s == stage and d == domain]
    if not items:
        known = sorted({d for (s, d, _) in p if s == stage and d})
        raise ValueError(f"stage {stage!r} has no domain {domain!r} in this config" + (f" (domains: {', '.join(known)})" if known else " (it takes no domain)"))
    return items
