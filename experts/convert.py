"""Dense MLA -> DSA: a DeepseekV3 checkpoint becomes a DeepseekV32 one with a fresh lightning indexer.

This is how DeepSeek-V3.2 was made from V3.1-Terminus: the same weights, an indexer added to every
attention layer, then the indexer warmed up by KL to the dense attention (`experts.warmup`) before
any sparse training. Both architectures in transformers share every parameter name except
`self_attn.indexer.*`, and DeepseekV32 applies RoPE interleaved as DeepseekV3 does by default, so
the converted model run dense computes the source model's logits exactly.

The converted model adopts the source's tensors (no copy); only the indexer is new.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers import DeepseekV32Config, DeepseekV32ForCausalLM, PreTrainedModel
from transformers.models.deepseek_v32.modeling_deepseek_v32 import DeepseekV32Indexer, DeepseekV32RotaryEmbedding

# DeepseekV3 config keys DeepseekV32 has no use for: the multi-token-prediction layers (not in the
# transformers checkpoint) and options whose V3 default DeepseekV32 hard-codes.
_V3_ONLY = ("num_nextn_predict_layers", "rope_interleave", "pretraining_tp")
_META_KEYS = ("model_type", "architectures", "transformers_version", "auto_map")


class IndexerShape(BaseModel):
    """The lightning indexer added to each attention layer. V3.2: 64 heads of 128, top-2048."""

    model_config = ConfigDict(extra="forbid")

    index_n_heads: int = Field(64, ge=1, description="indexer heads")
    index_head_dim: int = Field(128, ge=8, description="indexer head width (its first qk_rope_head_dim dims carry RoPE)")
    index_topk: int = Field(2048, ge=1, description="tokens each query attends to once sparse")


def is_dense_mla(model: PreTrainedModel) -> bool:
    """A DeepseekV3-architecture model: MLA attention, no indexer; `to_dsa` converts it."""
    return model.config.model_type == "deepseek_v3"


def is_dsa(model: PreTrainedModel) -> bool:
    return model.config.model_type == "deepseek_v32"


def dsa_config(config, indexer: IndexerShape) -> DeepseekV32Config:
    """The DeepseekV32 config of a DeepseekV3 `config`: every setting kept, the indexer's added."""
    if config.model_type != "deepseek_v3":
        raise ValueError(f"DSA conversion takes a DeepseekV3 (dense MLA) checkpoint, not model_type {config.model_type!r}")
    if not getattr(config, "rope_interleave", True):
        raise ValueError("DSA conversion needs rope_interleave=True: DeepseekV32 always applies RoPE interleaved, "
                         "so a checkpoint trained without it would compute different logits after conversion")
    if not config.q_lora_rank:
        raise ValueError("DSA conversion needs q_lora_rank: the indexer's queries are projected from the compressed query "
                         "(DeepSeek-V2-Lite-style checkpoints without one have nothing to build them from)")
    if indexer.index_head_dim < config.qk_rope_head_dim:
        raise ValueError(f"index_head_dim ({indexer.index_head_dim}) is smaller than qk_rope_head_dim ({config.qk_rope_head_dim}): "
                         "the indexer's keys carry RoPE on their first qk_rope_head_dim dims")
    settings = {k: v for k, v in config.to_dict().items() if k not in _V3_ONLY + _META_KEYS}
    return DeepseekV32Config(**settings, **indexer.model_dump())


def to_dsa(model: PreTrainedModel, indexer: IndexerShape, seed: int) -> DeepseekV32ForCausalLM:
    """`model` (DeepseekV3) as a DeepseekV32 with a freshly initialised indexer; the other tensors are `model`'s own.

    Raises ValueError when the checkpoint cannot be converted, or when any of its tensors would not
    carry over unchanged (a parameter name or shape that differs between the two architectures).
    """
    config = dsa_config(model.config, indexer)
    config._attn_implementation = model.config._attn_implementation
    source = model.state_dict()
    param = next(model.parameters())
    # Built on the meta device so that a large model is not allocated a second time just to be overwritten.
    with torch.device("meta"):
        dsa = DeepseekV32ForCausalLM(config)
    missing, unexpected = dsa.load_state_dict(source, strict=False, assign=True)
    if unexpected:
        raise ValueError(f"DSA conversion: {len(unexpected)} tensors of the source have no place in DeepseekV32: {unexpected[:5]}")
    if stray := [k for k in missing if ".indexer." not in k]:
        raise ValueError(f"DSA conversion: DeepseekV32 expects tensors the source lacks: {stray[:5]}")
    _init_indexers(dsa, config, param.device, param.dtype, seed)
    # Non-persistent buffers (RoPE frequencies) are not in the state dict: take the source's, in the
    # dtype it holds them (a model cast to bf16 casts them too, and its logits depend on it).
    dsa.model.rotary_emb = DeepseekV32RotaryEmbedding(config)
    for name, buffer in model.model.rotary_emb.named_buffers():
        setattr(dsa.model.rotary_emb, name, buffer)
    dsa.tie_weights()
    if meta := [n for n, t in (*dsa.named_parameters(), *dsa.named_buffers()) if t.is_meta]:
        raise ValueError(f"DSA conversion left tensors unset: {meta[:5]}")
    dsa.generation_config = model.generation_config
    return dsa.train(model.training)


def _init_indexers(model: nn.Module, config: DeepseekV32Config, device: torch.device, dtype: torch.dtype, seed: int) -> None:
    """Initialise every indexer as DeepseekV32 initialises a new model: linear weights N(0, initializer_range), LayerNorm 1/0."""
    generator = torch.Generator().manual_seed(seed)
    std = config.initializer_range
    for module in model.modules():
        if not isinstance(module, DeepseekV32Indexer):
            continue
        module.to_empty(device=device)
        for linear in (module.wq_b, module.wk, module.weights_proj):
            weight = torch.empty(linear.weight.shape).normal_(0.0, std, generator=generator)
            linear.weight = nn.Parameter(weight.to(device=device, dtype=dtype))
        module.k_norm.weight = nn.Parameter(torch.ones(module.head_dim, device=device, dtype=dtype))
        module.k_norm.bias = nn.Parameter(torch.zeros(module.head_dim, device=device, dtype=dtype))
