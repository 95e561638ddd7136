"""The base model's settings: the tiny DeepseekV32 (MLA attention + DSA lightning indexer) trained from
scratch by default, or a user's pretrained checkpoint (`pretrained`, adopted by `experts.pretrained`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from transformers import DeepseekV32Config, DeepseekV32ForCausalLM, PreTrainedTokenizerFast


# A hub id: "name" or "owner/name", letters, digits, "-", "_", "." (what the hub accepts).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class PretrainedSource(BaseModel):
    """A user's checkpoint, loaded with `from_pretrained`: a local directory or a hub id."""

    model_config = ConfigDict(extra="forbid")

    pretrained: str | None = Field(None, description="a local checkpoint directory or a hub id")
    revision: str | None = Field(None, description="hub revision of `pretrained` (branch, tag or commit; a commit keeps runs reproducible)")
    dtype: Literal["auto", "bfloat16", "float32"] = Field("auto", description="dtype `pretrained` loads in (auto: as saved)")
    trust_remote_code: bool = Field(False, description="let `pretrained` run model code from its repository")

    def load_kwargs(self) -> dict[str, Any]:
        """What every `from_pretrained` of this checkpoint (model, config, tokenizer) is given besides the name."""
        return {"revision": self.revision, "trust_remote_code": self.trust_remote_code}

    @field_validator("pretrained")
    @classmethod
    def _checkpoint_exists(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        if path.exists() or value.startswith(("/", ".", "~")) or not _HUB_ID.match(value):
            if not path.is_dir():
                raise ValueError(f"no checkpoint directory at {value!r} (a local path must be a directory; a hub id reads owner/name)")
            if not (path / "config.json").is_file():
                raise ValueError(f"{value!r} holds no config.json: not a transformers checkpoint directory")
        return value


class StudentSource(PretrainedSource):
    """A pretrained student of another size or family than the base."""

    pretrained: str = Field(description="a local checkpoint directory or a hub id")


class ModelConfig(PretrainedSource):
    """The base model. Without `pretrained`: the shape of the model trained from scratch (defaults fit
    CPU training in about a minute per stage). With it: that checkpoint is the base, adopted as it is,
    and only the indexer settings apply (to the indexer a DeepseekV3 checkpoint gets at dsa_warmup)."""

    vocab_size: int = Field(512, ge=64, description="BPE vocabulary trained on the seed data")
    hidden_size: int = Field(128, ge=16)
    intermediate_size: int = Field(384, ge=16)
    num_layers: int = Field(3, ge=1)
    num_heads: int = Field(4, ge=1)
    q_lora_rank: int = Field(64, ge=8)
    kv_lora_rank: int = Field(64, ge=8, description="MLA compressed latent width (512 in V3.2)")
    qk_nope_head_dim: int = Field(32, ge=8)
    qk_rope_head_dim: int = Field(16, ge=2, description="RoPE part of each query/key head (64 in V3.2)")
    v_head_dim: int = Field(32, ge=8)
    index_n_heads: int = Field(2, ge=1, description="DSA indexer heads (64 in V3.2)")
    index_head_dim: int = Field(32, ge=8)
    index_topk: int = Field(48, ge=1, description="tokens each query attends to (2048 in V3.2); below the sequence length sparsity bites")
    max_position_embeddings: int = Field(1024, ge=64)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        # Rejected rather than clamped: a top-k that silently shrank would make every sparse
        # measurement answer a question nobody asked.
        if self.pretrained is None and self.index_topk > self.max_position_embeddings:
            raise ValueError(f"index_topk ({self.index_topk}) is larger than max_position_embeddings "
                             f"({self.max_position_embeddings}): a query cannot attend to more tokens than a sequence holds")
        return self


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> DeepseekV32ForCausalLM:
    torch.manual_seed(seed)
    hf_config = DeepseekV32Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        q_lora_rank=cfg.q_lora_rank,
        kv_lora_rank=cfg.kv_lora_rank,
        qk_nope_head_dim=cfg.qk_nope_head_dim,
        qk_rope_head_dim=cfg.qk_rope_head_dim,
        v_head_dim=cfg.v_head_dim,
        index_n_heads=cfg.index_n_heads,
        index_head_dim=cfg.index_head_dim,
        index_topk=cfg.index_topk,
        # Dense MLPs in every layer: MoE routing at this size only adds noise and time.
        first_k_dense_replace=cfg.num_layers,
        moe_intermediate_size=cfg.intermediate_size,
        n_routed_experts=1,
        num_experts_per_tok=1,
        n_group=1,
        topk_group=1,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    return DeepseekV32ForCausalLM(hf_config)
