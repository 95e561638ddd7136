"""Small stand-ins for a user's own checkpoints, written in the real formats (`save_pretrained`).

Nothing can be downloaded here, so the tests make what a user would bring: a DeepseekV3 (dense MLA,
with MoE layers as in V3) and a Qwen2, both with random weights, and a BPE tokenizer shaped like a
chat model's: a ChatML chat template, no BOS and no pad token.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_TEXT = [
    "What is 12 + 30? The answer is 42.",
    "def add(a, b):\n    return a + b",
    "Search the documents for the capital of France: Paris.",
    "Call the tool with the arguments, then read the result.",
] * 20


def chat_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE with a ChatML template, `<|im_end|>` as EOS, and neither BOS nor pad (as Qwen2's base tokenizers)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_TEXT, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", chat_template=CHATML)


def deepseek_v3(directory: Path, tokenizer: PreTrainedTokenizerFast | None = None, seed: int = 0, **overrides) -> Path:
    """A random DeepseekV3 checkpoint: one dense layer, then MoE layers (4 routed experts, 2 per token)."""
    tokenizer = tokenizer or chat_tokenizer()
    torch.manual_seed(seed)
    config = DeepseekV3Config(**{
        "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
        "num_hidden_layers": 2, "first_k_dense_replace": 1, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "n_group": 1, "topk_group": 1, "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 32,
        "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
        "max_position_embeddings": 512, "eos_token_id": tokenizer.eos_token_id, "tie_word_embeddings": False, **overrides,
    })
    DeepseekV3ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def qwen2(directory: Path, tokenizer: PreTrainedTokenizerFast | None = None, seed: int = 0) -> Path:
    """A random two-layer Qwen2 checkpoint: a student of another family."""
    tokenizer = tokenizer or chat_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
