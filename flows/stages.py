"""Every stage, declared once: its outputs, its inputs (by role), the parameters in its identity, and whether it runs domain code.

The plan (`flows/plan.py`) turns this table into artifact ids; a stage's flow reads its inputs by
role through `flows.artifacts.StageRun`, so no flow names another stage's outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from domains.corpus import BM25Settings
from domains.prepare import content_hash
from experts.pretrained import source_identity
from flows.config import PipelineConfig

# (stage, domain or None, output name)
Key = tuple[str, str | None, str]
Inputs = Callable[[PipelineConfig, str | None], dict[str, Key]]
Params = Callable[[PipelineConfig, str | None], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    name: str
    per_domain: bool
    outputs: dict[str, str]  # output name -> kind (dataset | checkpoint | report | index)
    inputs: Inputs
    params: Params
    domain_code: bool = False  # runs domain code (tasks, verifiers, tools): its identity includes those modules
    applies: Callable[[PipelineConfig, str | None], bool] | None = None  # stages only some domains (or configs) need
    applies_when: str = ""  # `applies` in words, for the error of a stage asked to run where it does not

    def domains(self, config: PipelineConfig) -> list[str | None]:
        """The domains this stage runs for: every configured one (that it applies to), or None for a stage over all domains (if it applies)."""
        if not self.per_domain:
            return [None] if self.applies is None or self.applies(config, None) else []
        return [d for d in config.domains if self.applies is None or self.applies(config, d)]

    def code_domains(self, config: PipelineConfig, domain: str | None) -> tuple[str, ...]:
        if not self.domain_code:
            return ()
        return (domain,) if domain else tuple(config.domains)


def _each(config: PipelineConfig, role: str, stage: str, name: str) -> dict[str, Key]:
    """One input per configured domain, roles `<role>:<domain>`."""
    return {f"{role}:{d}": (stage, d, name) for d in config.domains}


def _searches_corpus(c: PipelineConfig, d: str | None) -> bool:
    source = c.prepare.sources.get(d)
    return source is not None and source.corpus is not None


def _index_params(c: PipelineConfig, d: str | None) -> dict[str, Any]:
    import bm25s  # its version: another release may tokenize or score differently

    return {"corpus": content_hash(c.prepare.sources[d].corpus), "bm25": asdict(BM25Settings()), "bm25s": bm25s.__version__}


def _prepare_params(c: PipelineConfig, d: str | None) -> dict[str, Any]:
    source = c.prepare.sources.get(d)
    return {
        "domain": d, "seed": c.seed, **c.prepare_config(d).model_dump(exclude={"sources"}),
        "source": source and {**source.model_dump(), "sha256": source.content_hash()},
    }


def _base_params(c: PipelineConfig, d: str | None) -> dict[str, Any]:
    if c.model.pretrained:  # adopted, not trained: the checkpoint is the whole identity
        return {"pretrained": source_identity(c.model)}
    return {"seed": c.seed, "model": c.model.model_dump(), "train": c.base.model_dump()}


def _runs_opd(c: PipelineConfig, d: str | None) -> bool:
    return c.opd.steps > 0


def _runs_mixed_rl(c: PipelineConfig, d: str | None) -> bool:
    return c.mixed_rl.steps > 0


# The stages after distill, in order: each starts from the student the previous one left.
AFTER_DISTILL = (("opd", _runs_opd), ("mixed_rl", _runs_mixed_rl))


def _student_after(c: PipelineConfig, stage: str) -> Key:
    """The student `stage` starts from: the last stage before it that runs, or distill's."""
    before = [s for s, runs in AFTER_DISTILL[: [s for s, _ in AFTER_DISTILL].index(stage)] if runs(c, None)]
    return (before[-1], None, "model") if before else ("distill", None, "model")


def _after_distill(c: PipelineConfig) -> dict[str, Key]:
    """The students after distill (on-policy distilled, mixed RL), as inputs of the stages after them, when the run has them."""
    return {s: (s, None, "model") for s, runs in AFTER_DISTILL if runs(c, None)}


def _decontam(c: PipelineConfig) -> dict[str, Any]:
    return c.distill.model_dump(include={"decontam_ngram", "decontam_overlap"})


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        # Keyed on the corpus content alone: new questions over the same documents reuse the index.
        Stage(
            "index", True, {"index": "index"},
            inputs=lambda c, d: {},
            params=_index_params,
            applies=_searches_corpus,
            applies_when="a domain's prepare.sources entry names a corpus",
        ),
        Stage(
            "prepare", True, {"seed": "dataset", "prompts": "dataset", "eval": "dataset"},
            inputs=lambda c, d: {"index": ("index", d, "index")} if _searches_corpus(c, d) else {},
            params=_prepare_params,
            domain_code=True,
        ),
        Stage(
            "base", False, {"model": "checkpoint"},
            inputs=lambda c, d: _each(c, "seed", "prepare", "seed"),
            params=_base_params,
        ),
        Stage(
            "train_expert", True, {"model": "checkpoint"},
            inputs=lambda c, d: {"base": ("base", None, "model"), "seed": ("prepare", d, "seed"), "prompts": ("prepare", d, "prompts"), "eval": ("prepare", d, "eval")},
            params=lambda c, d: {"seed": c.seed, "train": c.expert_config(d).model_dump(), "rl": c.rl_config(d).model_dump()},
            domain_code=True,
        ),
        Stage(
            "dsa_warmup", True, {"model": "checkpoint"},
            inputs=lambda c, d: {"expert": ("train_expert", d, "model"), "seed": ("prepare", d, "seed")},
            # The indexer shape: what a converted DeepseekV3 expert gets (a tiny base has it already, through the base's identity).
            params=lambda c, d: {"seed": c.seed, "warmup": c.dsa_warmup.model_dump(),
                                 "indexer": c.model.model_dump(include={"index_n_heads", "index_head_dim", "index_topk"})},
        ),
        Stage(
            "generate", True, {"generations": "dataset"},
            inputs=lambda c, d: {"expert": ("dsa_warmup", d, "model"), "prompts": ("prepare", d, "prompts")},
            params=lambda c, d: {"seed": c.seed, **c.generate_config(d).model_dump(), "teacher_logprobs": c.teacher_logprobs.model_dump()},
            domain_code=True,
        ),
        Stage(
            "verify", True, {"verified": "dataset", "rejected": "dataset"},
            inputs=lambda c, d: {"generations": ("generate", d, "generations")},
            params=lambda c, d: {},
            domain_code=True,
        ),
        Stage(
            "mixture", False, {"mixture": "dataset"},
            inputs=lambda c, d: {**_each(c, "verified", "verify", "verified"), **_each(c, "eval", "prepare", "eval")},
            params=lambda c, d: {"seed": c.seed, **_decontam(c)},
        ),
        Stage(
            "distill", False, {"model": "checkpoint"},
            inputs=lambda c, d: {"base": ("base", None, "model"), "mixture": ("mixture", None, "mixture")},
            params=lambda c, d: {"seed": c.seed, "train": c.distill.model_dump(), "warmup": c.dsa_warmup.model_dump(),
                                 "student": source_identity(c.distill.student)},
        ),
        # The reference: the student's budget on the seed data only, no expert in the loop.
        Stage(
            "baseline", False, {"model": "checkpoint"},
            inputs=lambda c, d: {"base": ("base", None, "model"), **_each(c, "seed", "prepare", "seed"), **_each(c, "eval", "prepare", "eval")},
            params=lambda c, d: {"seed": c.seed, "train": c.distill.budget().model_dump(), **_decontam(c), "warmup": c.dsa_warmup.model_dump(),
                                 "student": source_identity(c.distill.student)},
        ),
        # The student on its own samples, graded token by token by each domain's expert.
        Stage(
            "opd", False, {"model": "checkpoint"},
            inputs=lambda c, d: {"student": _student_after(c, "opd"), **_each(c, "expert", "dsa_warmup", "model"), **_each(c, "prompts", "prepare", "prompts")},
            params=lambda c, d: {"seed": c.seed, "train": c.opd.model_dump(), "warmup": c.dsa_warmup.model_dump()},
            applies=_runs_opd,
            applies_when="opd.steps > 0",
        ),
        # GRPO on the student over every domain's prompts at once (after OPD when the run has it).
        Stage(
            "mixed_rl", False, {"model": "checkpoint"},
            inputs=lambda c, d: {"student": _student_after(c, "mixed_rl"), **_each(c, "prompts", "prepare", "prompts")},
            params=lambda c, d: {"seed": c.seed, "rl": c.mixed_rl.model_dump(), "warmup": c.dsa_warmup.model_dump()},
            applies=_runs_mixed_rl,
            applies_when="mixed_rl.steps > 0",
        ),
        Stage(
            "evaluate", False, {"scores": "dataset"},
            inputs=lambda c, d: {
                "base": ("base", None, "model"), **_each(c, "expert", "dsa_warmup", "model"), "student": ("distill", None, "model"),
                "baseline": ("baseline", None, "model"), **_each(c, "eval", "prepare", "eval"), **_after_distill(c),
            },
            params=lambda c, d: {"seed": c.seed, "evaluate": c.evaluate.model_dump()},
            domain_code=True,
        ),
        Stage(
            "report", False, {"report": "report"},
            inputs=lambda c, d: {
                "scores": ("evaluate", None, "scores"), "base": ("base", None, "model"), **_each(c, "sft", "train_expert", "model"),
                **_each(c, "expert", "dsa_warmup", "model"), "mixture": ("mixture", None, "mixture"), "student": ("distill", None, "model"),
                "baseline": ("baseline", None, "model"), **_after_distill(c),
            },
            params=lambda c, d: {},
        ),
    )
}
# The stages run per domain; the others run once over all domains.
DOMAIN_STAGES = tuple(name for name, s in STAGES.items() if s.per_domain)
