"""The vLLM backend for real: vLLM's offline engine (in .venv-vllm, on CPU) generates from a tiny dense
Llama trained here for a few hundred steps on two patterns, so its text can be checked:

    Letters: g h i ... z</s>                      every run of the alphabet ends at z
    Look up y. <call>{"tool": "get", ...}</call><result>4</result> Answer: 4</s>

Greedy text is compared with transformers' `model.generate` on the same weights, token for token.
"""

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from generation import vllm_backend
from domains.agents import KVEnv
from domains.base import RESULT_CLOSE, RESULT_OPEN
from generation.backends import generate_stream
from generation.types import Completion, EngineConfig, Request, SamplingConfig
from experts.model import ModelConfig, build_model
from experts.tokenizer import train_tokenizer

pytestmark = pytest.mark.slow

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
VLLM = EngineConfig(backend="vllm")
CALL = '<call>{"tool": "get", "args": {"key": "%s"}}</call>'


def _docs() -> list[str]:
    letters = ["Letters: " + " ".join(ALPHABET[start:]) for start in range(24)]
    tools = [f"Look up {k}. {CALL % k}{RESULT_OPEN}{v}{RESULT_CLOSE} Answer: {v}" for k in "xyz" for v in range(10)]
    return letters + tools


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 64, head_dim 32: vLLM's CPU attention has no smaller head size), trained until the patterns stick."""
    docs = _docs()
    tok = train_tokenizer(docs * 4, 300)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    encoded = [[tok.bos_token_id, *tok(d, add_special_tokens=False)["input_ids"], tok.eos_token_id] for d in docs]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small only wait on each other across threads (15x slower on a busy 2-core machine)
    try:
        for _ in range(300):
            batch = rng.sample(encoded, 16)
            width = max(map(len, batch))
            ids = torch.tensor([b + [tok.pad_token_id] * (width - len(b)) for b in batch])
            labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch])
            loss = model(input_ids=ids, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.5
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(checkpoint):
    from transformers import AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint)


def _run(loaded, requests, seed: int = 0, **sampling) -> list[Completion]:
    model, tok = loaded
    seen = []
    out: list[Completion | None] = [None] * len(requests)
    stream = generate_stream(model, tok, requests, SamplingConfig(**sampling), VLLM, seed=seed, progress=lambda done, total: seen.append((done, total)))
    for i, c in stream:
        out[i] = c
    assert seen == [(k, len(requests)) for k in range(1, len(requests) + 1)]
    return out  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def _small_kv_cache(monkeypatch):
    # vLLM on CPU would otherwise reserve 30% of the machine's RAM for KV blocks; 1 GiB is plenty here.
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")


def test_greedy_text_stops_and_a_tool_turn(loaded):
    model, tok = loaded
    requests = [
        Request("Letters: a b"),  # runs past the token budget
        Request("Letters: p q"),  # hits the stop string
        Request("Letters: w x"),  # ends with EOS
        Request("Look up y. ", env=KVEnv({"y": 4})),  # calls the tool, gets the answer, goes on to EOS
        Request("Look up y. "),  # calls a tool but has no environment
    ]
    out = _run(loaded, requests, temperature=0.0, max_new_tokens=32, stop=["u v"], max_tool_turns=2)

    letters, stopped, ended, tool, no_env = out
    assert letters.text == " " + " ".join(ALPHABET[2:18]) and letters.finish_reason == "length" and letters.model_tokens == 32
    assert stopped.text == " r s t u v" and stopped.finish_reason == "stop"
    assert ended.text == " y z" and ended.finish_reason == "eos" and ended.ids[-1] == tok.eos_token_id

    # The call is the model's, the result the environment's, and the model went on after it.
    call = CALL % "y"
    assert tool.text.startswith(f"{call}{RESULT_OPEN}4{RESULT_CLOSE} Answer: "), tool.text
    assert tool.finish_reason == "eos" and tool.tool_calls == 1
    result_ids = tok(f"{RESULT_OPEN}4{RESULT_CLOSE}", add_special_tokens=False)["input_ids"]
    assert tool.model_tokens == len(tool.ids) - tool.prompt_len - len(result_ids)
    assert no_env.text == call and no_env.finish_reason == "tool_turns" and no_env.tool_calls == 0

    for r, c in zip(requests, out):
        assert c.ids[: c.prompt_len] == [tok.bos_token_id, *tok(r.prompt, add_special_tokens=False)["input_ids"]]
        assert tok.decode([t for t in c.ids[c.prompt_len :] if t != tok.eos_token_id]) == c.text

    # vLLM's greedy tokens are transformers' greedy tokens on the same weights (each model turn; the
    # tool turn's continuation is checked from the trace, result included).
    for c in (letters, ended, no_env, tool):
        ids = torch.tensor([c.ids[: c.prompt_len]])
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False, eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("</call>")], pad_token_id=tok.pad_token_id)
        turn = want[0, c.prompt_len :].tolist()
        assert c.ids[c.prompt_len : c.prompt_len + len(turn)] == turn


def test_seeded_sampling_is_reproducible(loaded):
    # After "<result>" the value digit and the answer digit are each about uniform over 0-9: plenty to sample.
    prompt = "Look up y. " + CALL % "y" + RESULT_OPEN
    requests = [Request(prompt, seed=123), Request(prompt, seed=123)] + [Request(prompt) for _ in range(6)]
    out = _run(loaded, requests, temperature=1.0, top_p=1.0, max_new_tokens=12, seed=5)
    assert out[0].ids == out[1].ids  # same seed, different places in the batch: same tokens
    assert len({c.text for c in out}) >= 3  # default seeds come from (cfg.seed, index): they differ
    assert all(c.finish_reason in ("eos", "length") for c in out)


def test_clear_errors_without_checkpoint_dir_or_environment(loaded, monkeypatch, tmp_path):
    model, tok = loaded
    monkeypatch.setattr(model.config, "_name_or_path", str(tmp_path))
    with pytest.raises(ValueError, match="checkpoint directory"):
        next(generate_stream(model, tok, [Request("x")], SamplingConfig(), VLLM, seed=0))
    monkeypatch.undo()
    monkeypatch.setattr(vllm_backend, "VENV", tmp_path / "no-venv")
    with pytest.raises(RuntimeError, match="make vllm-env"):
        next(generate_stream(model, tok, [Request("x")], SamplingConfig(), VLLM, seed=0))


def test_sparse_models_are_refused_on_cpu(tmp_path):
    # vLLM's DeepSeek Sparse Attention kernels are GPU kernels: on CPU, DeepseekV32 generates with backend native.
    tok = train_tokenizer(_docs(), 300)
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, seed=0)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="dense models only.*backend=native"):
        next(generate_stream(model, tok, [Request("x")], SamplingConfig(), VLLM, seed=0))
