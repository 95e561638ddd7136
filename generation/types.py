"""What every generation backend takes and returns: sampling and engine settings, requests, completions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domains.base import ToolEnv

# done, total -> None; flows turn it into a progress bar or a Prefect progress artifact.
ProgressFn = Callable[[int, int], None]
FinishReason = Literal["eos", "length", "tool_turns", "stop"]


class SamplingConfig(BaseModel):
    """How one completion is drawn; the generate stage, RL rollouts and evaluation each hold one."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.8, ge=0.0, description="0 means greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling; 1 = off")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens only; 0 = off")
    max_new_tokens: int = Field(96, ge=1, description="model tokens per completion, tool results excluded")
    max_tool_turns: int = Field(4, ge=0, description="tool calls answered per completion")
    stop: list[str] = Field(default_factory=list, description="a completion ends once its text since the last tool result contains one of these (included)")
    ignore_eos: bool = Field(False, description="EOS and the tool-call close marker are ordinary tokens: every completion runs max_new_tokens (benchmarks)")

    @model_validator(mode="after")
    def _check(self) -> SamplingConfig:
        if any(not s for s in self.stop):
            raise ValueError("stop: empty stop string")
        return self


class EngineConfig(BaseModel):
    """Which backend generates and how much it runs at once; none of it changes a native completion."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["auto", "native", "hf", "vllm"] = Field(
        "auto", description="native: our engine (DeepseekV32); hf: model.generate on fixed batches; vllm: vLLM's offline engine in .venv-vllm; "
        "auto: native for a DSA model, hf for any other",
    )
    batch_size: int = Field(64, ge=1, description="sequences decoded together (native and vllm: running at once; hf: per model.generate call)")
    kv_cache_tokens: int | None = Field(
        None, ge=16, description="native only: KV cache slots shared by all running sequences; default batch_size x max_position_embeddings"
    )
    max_step_tokens: int = Field(8192, ge=1, description="native only: prompt tokens prefilled per step (one longer prompt still runs alone)")
    hf_attention: Literal["dsa_sparse", "sdpa"] = Field(
        "dsa_sparse",
        description="hf only: dsa_sparse runs our kernels over the indexer's top-k, sdpa transformers' dense path with a top-k mask "
        "(the same selection); a model without an indexer always runs sdpa",
    )


@dataclass
class Request:
    prompt: str
    env: ToolEnv | None = None
    seed: int | None = None  # sampling seed; default request_seed(seed of the call, request index)


@dataclass
class Completion:
    text: str
    finish_reason: FinishReason
    model_tokens: int
    tool_calls: int
    ids: list[int]  # [BOS] prompt completion, as the model saw them (tool results included)
    prompt_len: int


def request_seed(seed: int, index: int) -> int:
    """The sampling seed of request `index` under `seed`: a hash, so neighbouring requests are unrelated."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1


class InProcessEngineConfig(EngineConfig):
    """An engine for a model that lives in this process (RL rollouts, held-out measurements): vLLM would serve the checkpoint on disk instead."""

    backend: Literal["auto", "native", "hf"] = Field(
        "auto", description="native: our engine (DeepseekV32); hf: model.generate on fixed batches; auto: native for a DSA model, hf for any other"
    )
