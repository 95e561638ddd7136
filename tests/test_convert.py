"""Dense MLA -> DSA conversion (experts/convert.py) on a saved random DeepseekV3 checkpoint."""

from __future__ import annotations

import pytest
import torch
from byo_fixtures import deepseek_v3, qwen2
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, DeepseekV32ForCausalLM

from experts.convert import IndexerShape, to_dsa
from kernels.attention import dense_attention

INDEXER = IndexerShape(index_n_heads=2, index_head_dim=16, index_topk=8)


def _weights(directory) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(directory.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return deepseek_v3(tmp_path_factory.mktemp("v3") / "model")


def test_saved_conversion_keeps_every_source_tensor_bit_identical(source, tmp_path):
    converted = to_dsa(AutoModelForCausalLM.from_pretrained(source), INDEXER, seed=0)
    converted.save_pretrained(tmp_path / "dsa")

    before, after = _weights(source), _weights(tmp_path / "dsa")
    assert before, "the fixture saved no safetensors"
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    added = sorted(set(after) - set(before))
    assert added and all(".self_attn.indexer." in k for k in added)
    # Every layer got an indexer, with weights that are not all zero (a fresh init, not an empty buffer).
    assert {k.split(".self_attn")[0] for k in added} == {"model.layers.0", "model.layers.1"}
    assert all(after[k].abs().sum() > 0 for k in added if k.endswith("wk.weight"))

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "dsa")
    assert isinstance(reloaded, DeepseekV32ForCausalLM)
    assert reloaded.config.index_topk == INDEXER.index_topk


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 0.0)])
def test_converted_model_run_dense_computes_the_source_logits(source, dtype, tolerance):
    dense = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).eval()
    converted = to_dsa(dense, INDEXER, seed=0)
    ids = torch.randint(0, dense.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = dense(ids).logits
        with dense_attention(converted):
            got = converted(ids).logits
        sparse = converted(ids).logits
    assert (got - expected).abs().max().item() <= tolerance
    # 40 tokens against a top-8: the new indexer really selects, so the sparse logits move.
    assert (sparse - expected).abs().max().item() > 1e-3


def test_converted_indexers_differ_by_seed(source):
    dense = AutoModelForCausalLM.from_pretrained(source)
    a, b = (to_dsa(dense, INDEXER, seed=s).model.layers[0].self_attn.indexer.wk.weight for s in (0, 1))
    assert not torch.equal(a, b)
    assert torch.equal(a, to_dsa(dense, INDEXER, seed=0).model.layers[0].self_attn.indexer.wk.weight)


def test_conversion_refuses_what_it_cannot_convert(tmp_path):
    llama_like = AutoModelForCausalLM.from_pretrained(qwen2(tmp_path / "qwen"))
    with pytest.raises(ValueError, match="not model_type 'qwen2'"):
        to_dsa(llama_like, INDEXER, seed=0)
    no_interleave = AutoModelForCausalLM.from_pretrained(deepseek_v3(tmp_path / "plain-rope", rope_interleave=False))
    with pytest.raises(ValueError, match="rope_interleave"):
        to_dsa(no_interleave, INDEXER, seed=0)
    no_q_lora = AutoModelForCausalLM.from_pretrained(deepseek_v3(tmp_path / "lite", q_lora_rank=None))
    with pytest.raises(ValueError, match="q_lora_rank"):
        to_dsa(no_q_lora, INDEXER, seed=0)
    wide_rope = AutoModelForCausalLM.from_pretrained(deepseek_v3(tmp_path / "wide-rope", qk_rope_head_dim=16))
    with pytest.raises(ValueError, match="index_head_dim"):
        to_dsa(wide_rope, IndexerShape(index_n_heads=2, index_head_dim=8, index_topk=8), seed=0)
