"""Every artifact a run will produce and its id, from the config (and, for prepared data, the catalog), before anything runs.

An id is `sha256(stage, domain, output name, the stage's code hash, its parameters, its parents' keys)`.
A parent's key is its id, except for prepared datasets whose file exists: their key is a hash of
their content. Preparing takes seconds and is redone whenever a domain's module changes (it
holds the task generator beside the verifier); keying on content means an edit that leaves the
tasks as they were (a verifier fix) does not retrain the base model and every expert with it.
Until prepare has run, later ids are provisional; each stage re-plans when it starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data.catalog import Catalog
from data.lineage import artifact_id
from flows.config import PipelineConfig
from flows.identity import code_hash
from flows.stages import STAGES, Key

CONTENT_KEYED = "prepare"


@dataclass(frozen=True)
class Planned:
    stage: str
    domain: str | None
    name: str
    kind: str
    params: dict[str, Any]
    parents: tuple[str, ...]
    id: str
    key: str  # what children hash: the id, or the content hash of a prepared dataset
    code: str  # the stage's code hash

    @property
    def uri(self) -> str:
        where = f"{self.stage}/{self.domain or 'all'}"
        if self.kind == "dataset":
            return f"datasets/{where}/{self.name}-{self.id}.parquet"
        if self.kind == "checkpoint":
            return f"checkpoints/{where}/{self.name}-{self.id}"
        if self.kind == "index":
            return f"indexes/{where}/{self.name}-{self.id}"
        return f"reports/{self.name}-{self.id}"


Plan = dict[Key, Planned]


def plan(config: PipelineConfig, catalog: Catalog | None = None) -> Plan:
    catalog = catalog or config.open_catalog()
    out: Plan = {}
    for stage in STAGES.values():
        for d in stage.domains(config):
            inputs = [out[key] for key in stage.inputs(config, d).values()]
            params = stage.params(config, d)
            code = code_hash(stage.name, stage.code_domains(config, d))
            for name, kind in stage.outputs.items():
                item_id = artifact_id(stage.name, d, name, code, params, [p.key for p in inputs])
                key = item_id
                if stage.name == CONTENT_KEYED and (record := catalog.find(item_id)) is not None and record.digest:
                    key = f"content:{record.digest}"
                out[(stage.name, d, name)] = Planned(stage.name, d, name, kind, params, tuple(p.id for p in inputs), item_id, key, code)
    return out


def outputs(p: Plan, stage: str, domain: str | None = None) -> list[Planned]:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")
    items = [item for (s, d, _), item in p.items() if s == stage and d == domain]
    if not items:
        known = sorted({d for (s, d, _) in p if s == stage and d})
        raise ValueError(f"stage {stage!r} has no domain {domain!r} in this config" + (f" (domains: {', '.join(known)})" if known else " (it takes no domain)"))
    return items


def inputs(p: Plan, config: PipelineConfig, stage: str, domain: str | None) -> dict[str, Planned]:
    """The stage's inputs by role."""
    return {role: p[key] for role, key in STAGES[stage].inputs(config, domain).items()}
