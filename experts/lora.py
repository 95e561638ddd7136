"""LoRA (peft): low-rank adapters train instead of the full weights, and are merged into them when training ends.

The saved checkpoint is then an ordinary transformers model: it loads without peft, and its logits
are the adapted model's (tests/test_lora.py).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class LoraSettings(BaseModel):
    """Adapters on `target_modules`: W + (alpha / r) * B A, with A [r, in] random and B [out, r] zero at the start."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: float = Field(32.0, gt=0, description="scale numerator: the update is (alpha / r) * B A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt (e.g. [q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj]), "
        "or all-linear: every nn.Linear but the output head",
    )


@contextlib.contextmanager
def lora_adapters(model: nn.Module, settings: LoraSettings | None) -> Iterator[None]:
    """Within: `model` carries adapters (inserted in place) and only they require grad. On exit they are
    merged into the weights and removed, and every parameter's requires_grad is as it was."""
    if settings is None:
        yield
        return
    from peft import LoraConfig, get_peft_model  # imported here: only LoRA runs need peft

    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=settings.target_modules)
    peft_model = get_peft_model(model, config)
    try:
        yield
    finally:
        peft_model.merge_and_unload()
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])


def _adapter_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """Within: the adapters that `lora_adapters` inserted are bypassed, so `model` computes the weights it
    started from: GRPO's reference model under LoRA without a second copy of the model."""
    layers = _adapter_layers(model)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with its adapters merged into the weights. Code that reads a weight directly
    (the absorbed MLA path reads kv_b_proj.weight) sees the adapted weight; merging in place and
    unmerging after would instead leave a rounding error in the base weights at every round."""
    merged = copy.deepcopy(model)
    for layer in _adapter_layers(merged):
        layer.merge()
    return merged.eval()
