"""Data-parallel training under torchrun (experts/distributed.py): two gloo processes on CPU train
the same model as one process at the same global batch."""

from __future__ import annotations

import pytest
from byo_fixtures import chat_tokenizer, deepseek_v3
from transformers import AutoModelForCausalLM

from experts.pretrained import ready_tokenizer
from experts.sft import TrainConfig, train_sft

ROWS = [{"prompt": f"What is {a} + {b}?", "completion": f"The answer is {a + b}."} for a in range(10) for b in range(6)]
# Measured 1.4e-6 over 8 steps: the same float32 arithmetic but for the order of the sums (each
# process sums its rows' token losses, then gloo adds the two sums and the two gradients).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return deepseek_v3(tmp_path_factory.mktemp("v3") / "model")


def test_two_processes_follow_the_single_process_loss_curve(checkpoint):
    tokenizer = ready_tokenizer(chat_tokenizer(), "fixture")
    cfg = TrainConfig(steps=8, batch_size=8, lr=3e-3, warmup_steps=0)
    one = AutoModelForCausalLM.from_pretrained(checkpoint)
    single = train_sft(one, tokenizer, ROWS, cfg, seed=0)
    two = AutoModelForCausalLM.from_pretrained(checkpoint)
    seen = []
    parallel = train_sft(two, tokenizer, ROWS, cfg.model_copy(update={"devices": 2}), seed=0, progress=lambda s, n, loss: seen.append((s, n, loss)))
    assert max(abs(a - b) for a, b in zip(single, parallel, strict=True)) <= TOLERANCE
    assert seen == [(i + 1, 8, loss) for i, loss in enumerate(parallel)]  # progress from the subprocess, every step
    assert single[-1] < single[0] - 1.0  # it trained
    weights_one, weights_two = one.state_dict(), two.state_dict()
    assert max((weights_one[k] - weights_two[k]).abs().max().item() for k in weights_one) <= 1e-4


def test_a_failing_run_raises_with_its_log(checkpoint):
    tokenizer = ready_tokenizer(chat_tokenizer(), "fixture")
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    # A token id beyond the embedding table fails inside the worker processes.
    bad = [{"prompt": "x", "completion": "y"}] * 4
    tokenizer.add_tokens([f"<extra{i}>" for i in range(600)])
    bad[0] = {"prompt": "<extra599>", "completion": "y"}
    with pytest.raises(RuntimeError, match=r"(?s)data-parallel training \(2 processes, torchrun\) exited 1; its log ends:.*IndexError"):
        train_sft(model, tokenizer, bad, TrainConfig(steps=2, batch_size=2, warmup_steps=0, devices=2), seed=0)
