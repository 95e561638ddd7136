"""PreallocatedCache: the same tokens as transformers' DynamicCache, without copying the cache at each step."""

import copy

import pytest
import torch
from transformers import DeepseekV32ForCausalLM, DynamicCache

from kernels.cache import PreallocatedCache
from kernels.mla import enable_sparse_attention
from tests.kernels.test_mla import PAD, SEQ, tiny_config

NEW = 12


@pytest.fixture(scope="module")
def models() -> dict[str, DeepseekV32ForCausalLM]:
    torch.manual_seed(0)
    stock = DeepseekV32ForCausalLM(tiny_config()).eval()
    stock.set_attn_implementation("sdpa")
    return {"sdpa": stock, "dsa_sparse": enable_sparse_attention(copy.deepcopy(stock))}


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 100, (2, SEQ), generator=gen)
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[0, :PAD] = 0
    return ids, mask


@pytest.mark.parametrize("attention", ["sdpa", "dsa_sparse"])
@pytest.mark.parametrize("capacity", [0, 5, SEQ + NEW])  # grows from the prefill, grows mid-prefill, allocated once
def test_generate_gives_the_dynamic_cache_tokens(models, attention: str, capacity: int) -> None:
    model = models[attention]
    ids, mask = prompts()
    kwargs = dict(attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    want = model.generate(ids, past_key_values=DynamicCache(config=model.config), **kwargs)
    cache = PreallocatedCache(model.config, capacity=capacity)
    got = model.generate(ids, past_key_values=cache, **kwargs)
    assert torch.equal(got, want)
    assert cache.get_seq_length() == SEQ + NEW - 1  # the last sampled token is never fed back


@pytest.mark.parametrize("attention", ["sdpa", "dsa_sparse"])
def test_beam_search_reorders_and_expands_like_dynamic_cache(models, attention: str) -> None:
    model = models[attention]
    ids, mask = prompts()
    kwargs = dict(attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=3, num_return_sequences=2)
    want = model.generate(ids, past_key_values=DynamicCache(config=model.config), **kwargs)
    got = model.generate(ids, past_key_values=PreallocatedCache(model.config, capacity=SEQ + 6), **kwargs)
    assert torch.equal(got, want)


def test_decode_steps_write_in_place(models) -> None:
    """With room for every token, no step allocates: each layer's buffers keep their address."""
    model = models["dsa_sparse"]
    ids, mask = prompts()
    cache = PreallocatedCache(model.config, capacity=SEQ + NEW)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        addresses = [{k: b.data_ptr() for k, b in layer._buffers.items()} for layer in cache.layers]
        for _ in range(NEW):
            nxt = out.logits[:, -1:].argmax(-1)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            out = model(nxt, attention_mask=mask, past_key_values=cache, use_cache=True)
    for layer, before in zip(cache.layers, addresses):
        assert {k: b.data_ptr() for k, b in layer._buffers.items()} == before
        assert layer.keys.data_ptr() == before["keys"] and layer.keys.shape[-2] == SEQ + NEW
        assert layer.indexer_keys.shape[1] == SEQ + NEW


def test_crop_keeps_keys_and_indexer_keys_together(models) -> None:
    model = models["dsa_sparse"]
    ids, mask = prompts()
    cache = PreallocatedCache(model.config)
    with torch.no_grad():
        model(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
    whole = [layer.keys.clone() for layer in cache.layers]
    cache.crop(-4)
    for layer, before in zip(cache.layers, whole):
        assert layer.get_seq_length() == SEQ - 4 and layer.indexer_keys.shape[1] == SEQ - 4
        assert torch.equal(layer.keys, before[..., : SEQ - 4, :])


def test_refuses_models_with_sliding_window_layers() -> None:
    from transformers import LlamaConfig, Qwen2Config

    assert PreallocatedCache.fits(tiny_config()) and PreallocatedCache.fits(LlamaConfig(num_hidden_layers=2))
    windowed = Qwen2Config(num_hidden_layers=4, use_sliding_window=True, sliding_window=8, max_window_layers=2)
    assert not PreallocatedCache.fits(windowed)
    with pytest.raises(ValueError, match="Qwen2Config has sliding-window"):
        PreallocatedCache(windowed)
