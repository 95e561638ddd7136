"""The pipeline's typed configuration: one YAML file, overridable with `--set key=value`.

Each stage's own settings are defined beside its code (TrainConfig in experts/sft.py, ...);
this module only composes them and checks the whole at load time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from transformers import AutoTokenizer

from data.catalog import Catalog, engine_url
from distill.opd import OPDConfig
from distill.train import DistillConfig
from domains import DOMAINS
from domains.formats import FORMATS
from domains.prepare import PrepareConfig
from experts.heldout import EvalConfig
from experts.model import ModelConfig, StudentSource
from experts.pretrained import describe_vocabulary, same_vocabulary
from experts.rl import RLConfig
from experts.sft import TrainConfig
from experts.warmup import WarmupConfig
from generation.logprobs import TeacherLogprobsConfig
from generation.streaming import GenerateConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the field."""


class DomainOverrides(BaseModel):
    """Per-domain changes to the shared expert/generate settings; only this domain's branch re-runs."""

    model_config = ConfigDict(extra="forbid")

    prepare: dict[str, Any] = Field(default_factory=dict)
    expert: dict[str, Any] = Field(default_factory=dict)
    rl: dict[str, Any] = Field(default_factory=dict)
    generate: dict[str, Any] = Field(default_factory=dict)


class RayResources(BaseModel):
    """What one Ray task asks of its node (Ray's own `num_cpus` / `num_gpus`; None: Ray's default)."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)


class ExecutionConfig(BaseModel):
    """How stages run: where the domain branches execute, and Prefect's retries of a failed stage flow,
    which resumes from what it already saved. Not part of any stage's identity: a runner changes no artifact."""

    model_config = ConfigDict(extra="forbid")

    retries: int = Field(1, ge=0, description="retries of a failed stage (transient failures: a killed worker, a full disk freed)")
    retry_delay_seconds: float = Field(10.0, ge=0, description="wait before a retry")
    runner: Literal["threads", "ray"] = Field(
        "threads", description="threads: the domain branches and the baseline run as threads of the pipeline's process; "
        "ray: as Ray tasks on a cluster (prefect-ray's RayTaskRunner; docs/scale-out.md)")
    address: str | None = Field(None, description="the Ray cluster to join (host:port of its head, or ray://host:10001); "
                                "None starts a temporary local one")
    resources: dict[Literal["branch", "baseline", "generate"], RayResources] = Field(
        default_factory=dict, description="what each Ray task asks for: branch (one domain's expert, warm-up, generate, verify), "
        "baseline, generate (one part of a generate stage: generate.parts); e.g. {branch: {num_gpus: 1}, generate: {num_gpus: 1}}")
    threads: int | None = Field(None, ge=1, description="torch threads in each Ray task (default: its num_cpus, else 1)")
    snapshot_minutes: float | None = Field(
        10.0, ge=0, description="save each training phase's state (weights, optimizer, random state, data order) this often and "
        "at the phase's end, under <run_root>/.work/<artifact id>/, so that a killed stage resumes at its last snapshot with the same result; "
        "0: after every step; None: never")
    verify_workers: int | None = Field(
        None, ge=1, description="threads judging each verify stage's generations (a code completion runs in a sandboxed process of its own); "
        "default: torch's thread count there (a Ray task's CPUs, docs/scale-out.md)")

    @model_validator(mode="after")
    def _ray_settings_need_ray(self) -> ExecutionConfig:
        if self.runner != "ray" and (self.address is not None or self.resources or self.threads is not None):
            raise ValueError("execution.address, execution.resources and execution.threads apply to runner: ray only")
        return self


class CatalogConfig(BaseModel):
    """Where the lineage catalog lives. Not part of any stage's identity: where rows are kept changes no artifact."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, description="sqlite:///<file>, or postgresql://user@host:port/database that several run roots "
                            "share (docs/scale-out.md); default: <run_root>/catalog.sqlite")

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        if url is not None:
            engine_url(url)
        return url


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_root: str = Field("runs/tiny", description="where datasets, checkpoints and the catalog live")
    seed: int = Field(0, description="every stage's randomness derives from it (per stage and domain): tasks, initial weights, batches, samples")
    domains: list[str] = Field(default_factory=lambda: ["math", "code", "agents", "search"])
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    base: TrainConfig = Field(default_factory=lambda: TrainConfig(loss_on_prompt=True))
    expert: TrainConfig = Field(default_factory=TrainConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    dsa_warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    teacher_logprobs: TeacherLogprobsConfig = Field(
        default_factory=TeacherLogprobsConfig, description="the experts' top-k log-probs stored by the generate stage, for token-level KD"
    )
    distill: DistillConfig = Field(default_factory=DistillConfig)
    opd: OPDConfig = Field(default_factory=OPDConfig, description="on-policy distillation of the student by every expert, after distill")
    mixed_rl: RLConfig = Field(
        default_factory=RLConfig, description="GRPO on the student over every domain's prompts at once, after distill (and OPD); "
        "steps 0 leaves it out. Its held-out settings are unused: evaluate scores the result",
    )
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    per_domain: dict[str, DomainOverrides] = Field(default_factory=dict)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        for d in self.domains:
            if d not in DOMAINS:
                raise ValueError(f"unknown domain {d!r} in domains (known: {', '.join(sorted(DOMAINS))})")
        if not self.domains:
            raise ValueError(f"domains is empty: name at least one of {', '.join(sorted(DOMAINS))}")
        if twice := sorted({d for d in self.domains if self.domains.count(d) > 1}):
            raise ValueError(f"domains lists {', '.join(twice)} twice")
        if not self.run_root.strip():
            raise ValueError("run_root is empty: name the directory for this run's artifacts")
        for d, source in self.prepare.sources.items():
            if d not in self.domains:
                raise ValueError(f"prepare.sources.{d}: {d!r} is not in domains")
            if source.format != "columns" and (judge := FORMATS[source.format].domain) != d:
                raise ValueError(f"prepare.sources.{d}.format: {source.format} is a {judge} dataset (the {judge} verifier judges it), not {d}")
        # Settings for a known domain that this run leaves out are ignored, so that narrowing
        # `domains` on the command line keeps the YAML valid; an unknown name is a typo.
        for d in self.distill.domain_weights:
            if d not in DOMAINS:
                raise ValueError(f"distill.domain_weights.{d}: unknown domain {d!r} (known: {', '.join(sorted(DOMAINS))})")
        if self.distill.kd.loss != "none" and self.teacher_logprobs.topk == 0:
            raise ValueError(f"distill.kd.loss: {self.distill.kd.loss} needs the teachers' log-probs, but teacher_logprobs.topk is 0")
        if self.distill.kd.loss != "none" and self.distill.student is not None:
            _check_shared_vocabulary(self.model, self.distill.student, f"distill.kd.loss: {self.distill.kd.loss}",
                                     "set distill.kd.loss: none (sequence-level KD: the student learns the experts' text)")
        if self.opd.steps > 0 and self.distill.student is not None:
            _check_shared_vocabulary(self.model, self.distill.student, f"opd.steps: {self.opd.steps} (on-policy distillation)",
                                     "set opd.steps: 0 (the student keeps what off-policy distillation taught it)")
        for d, overrides in self.per_domain.items():
            if d not in DOMAINS:
                raise ValueError(f"per_domain.{d}: unknown domain {d!r} (known: {', '.join(sorted(DOMAINS))})")
            # Build them now so that a bad override fails at load, not halfway through a run.
            self.prepare_config(d)
            self.expert_config(d)
            self.rl_config(d)
            self.generate_config(d)
        return self

    def open_catalog(self) -> Catalog:
        """This run root's rows in the configured catalog."""
        return Catalog(self.run_root, self.catalog.url)

    def prepare_config(self, domain: str) -> PrepareConfig:
        return _merged(self.prepare, self._overrides(domain).prepare, f"per_domain.{domain}.prepare")

    def expert_config(self, domain: str) -> TrainConfig:
        return _merged(self.expert, self._overrides(domain).expert, f"per_domain.{domain}.expert")

    def rl_config(self, domain: str) -> RLConfig:
        return _merged(self.rl, self._overrides(domain).rl, f"per_domain.{domain}.rl")

    def generate_config(self, domain: str) -> GenerateConfig:
        return _merged(self.generate, self._overrides(domain).generate, f"per_domain.{domain}.generate")

    def _overrides(self, domain: str) -> DomainOverrides:
        return self.per_domain.get(domain, DomainOverrides())

    def seed_for(self, stage: str, domain: str | None = None) -> int:
        """The seed of one stage (and domain): derived from `seed`, so no two stages draw the same numbers."""
        return int.from_bytes(hashlib.sha256(f"{self.seed}:{stage}:{domain}".encode()).digest()[:4], "little")


def _check_shared_vocabulary(teachers: ModelConfig, student: StudentSource, setting: str, fix: str) -> None:
    """Token-level KD and OPD compare next-token distributions over one vocabulary: `setting` is refused, at load, for a student with another."""
    theirs = f"distill.student.pretrained {student.pretrained!r}"
    if teachers.pretrained is None:
        raise ValueError(f"{setting} needs one vocabulary for teachers and student, but the teachers' tokenizer is "
                         f"trained by this run (model.pretrained is unset) and the student {theirs} brings its own: {fix}")
    t = AutoTokenizer.from_pretrained(teachers.pretrained, **teachers.load_kwargs())
    s = AutoTokenizer.from_pretrained(student.pretrained, **student.load_kwargs())
    if not same_vocabulary(t, s):
        raise ValueError(f"{setting} needs one vocabulary for teachers and student: the teachers' is "
                         f"{describe_vocabulary(t, f'model.pretrained {teachers.pretrained!r}')}, the student's "
                         f"{describe_vocabulary(s, theirs)}: {fix}")


def _merged(base: BaseModel, overrides: dict[str, Any], where: str):
    try:
        return type(base).model_validate(_deep_merge(base.model_dump(), overrides))
    except ValidationError as e:
        raise ValueError(_describe(e, prefix=where)) from None


def _describe(error: ValidationError, prefix: str = "") -> str:
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"])
        field = ".".join(p for p in (prefix, loc) if p)
        got = f" (got {item['input']!r})" if item["type"] != "missing" and not isinstance(item.get("input"), dict) else ""
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{field or 'config'}: {message}{got}")
    return "; ".join(lines)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["distill.steps=2", "domains=[math]"]` -> nested dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with another override of {part!r}")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"config {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML: {getattr(e, 'problem', None) or e}{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(raw).__name__}")
    raw = _deep_merge(raw, parse_overrides(overrides or []))
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"invalid config {path}: {_describe(e)}") from None


def resolve(config: PipelineConfig | None, config_file: str | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """A flow's configuration from its parameters: a whole `config`, or a YAML file (default: configs/tiny.yaml) with `key=value` overrides.

    Read when the flow runs, not when its module is imported, so a deployment's form offers the
    file and the overrides exactly as the command line does.
    """
    if config is not None:
        if config_file or overrides:
            raise ConfigError("give either config or config_file/overrides, not both")
        return config
    return load_config(config_file, overrides)
