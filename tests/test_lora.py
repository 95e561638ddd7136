"""Training that fits real models: LoRA merged into a plain checkpoint, gradient checkpointing, bf16 autocast."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from byo_fixtures import chat_tokenizer, deepseek_v3
from transformers import AutoModelForCausalLM

from experts.lora import LoraSettings, adapters_off, lora_adapters, merged_copy
from experts.pretrained import ready_tokenizer
from experts.sft import TrainConfig, collate, encode, train_sft

ROWS = [{"prompt": f"What is {a} + {b}?", "completion": f"The answer is {a + b}."} for a in range(8) for b in range(4)]
# peft would be imported by transformers only to read an adapter: with it unimportable, a load that needs it fails.
LOAD_WITHOUT_PEFT = """
import sys
sys.modules["peft"] = None
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return deepseek_v3(tmp_path_factory.mktemp("v3") / "model")


@pytest.fixture(scope="module")
def tokenizer():
    return ready_tokenizer(chat_tokenizer(), "fixture")


def _batch(tokenizer):
    return collate([encode(tokenizer, r["prompt"], r["completion"], False, 64) for r in ROWS[:8]], tokenizer.pad_token_id)


def test_merged_lora_loads_without_peft_and_keeps_the_adapted_logits(checkpoint, tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _batch(tokenizer)
    settings = LoraSettings(r=4, alpha=8.0, target_modules=["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"])
    with lora_adapters(model, settings):
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trained and all("lora_" in n for n in trained)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(3):  # B starts at zero: a few steps make the adapters matter
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            adapted = model(batch["input_ids"]).logits
    assert all(p.requires_grad for p in model.parameters())
    assert not any("lora" in k for k in model.state_dict())

    merged = model.state_dict()
    changed = {k for k in original if not torch.equal(original[k], merged[k])}
    assert changed and all(k.split(".")[-2] in {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"} for k in changed)

    model.save_pretrained(tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    torch.save(batch["input_ids"], tmp_path / "ids.pt")
    subprocess.run([sys.executable, "-c", LOAD_WITHOUT_PEFT, str(tmp_path / "merged"), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")],
                   check=True, capture_output=True, timeout=300)
    reloaded = torch.load(tmp_path / "logits.pt")
    assert (reloaded - adapted).abs().max().item() <= 1e-4
    with torch.no_grad():
        assert (AutoModelForCausalLM.from_pretrained(checkpoint)(batch["input_ids"]).logits - adapted).abs().max().item() > 1e-3


def test_train_sft_with_lora_trains_only_the_adapted_modules(checkpoint, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(steps=4, batch_size=8, lr=1e-2, warmup_steps=0, lora=LoraSettings(r=4, alpha=8.0))
    losses = train_sft(model, tokenizer, ROWS, cfg, seed=0)
    assert len(losses) == 4 and losses[-1] < losses[0]
    merged = model.state_dict()
    assert not model.training
    for name in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(merged[name], original[name]), name  # not adapted: untouched (all-linear spares embeddings and norms)
    assert not torch.equal(merged["model.layers.0.self_attn.o_proj.weight"], original["model.layers.0.self_attn.o_proj.weight"])


def test_gradient_checkpointing_and_bf16_train_the_same_model(checkpoint, tokenizer):
    def losses(**settings) -> list[float]:
        model = AutoModelForCausalLM.from_pretrained(checkpoint)
        out = train_sft(model, tokenizer, ROWS, TrainConfig(steps=4, batch_size=8, lr=3e-3, warmup_steps=0, **settings), seed=0)
        assert not model.is_activation_checkpointing
        return out

    plain = losses()
    assert losses(gradient_checkpointing=True) == pytest.approx(plain, abs=1e-5)
    bf16 = losses(precision="bf16")
    assert bf16 != plain and bf16 == pytest.approx(plain, abs=0.05)


def test_adapters_off_computes_the_model_without_its_adapters(checkpoint, tokenizer):
    """GRPO's KL reference under LoRA: the same module with its adapters bypassed, then on again."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    ids = _batch(tokenizer)["input_ids"]
    with torch.no_grad():
        original = model(ids).logits
    with lora_adapters(model, LoraSettings(r=4, alpha=8.0)):
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the adapters change the output
                torch.nn.init.normal_(p, std=0.1)
        with torch.no_grad():
            adapted = model(ids).logits
            with adapters_off(model):
                off = model(ids).logits
            again = model(ids).logits
            merged = merged_copy(model)(ids).logits
        assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    assert (adapted - original).abs().max().item() > 1e-3
    assert torch.equal(off, original) and torch.equal(again, adapted)
    assert (merged - adapted).abs().max().item() <= 1e-5
