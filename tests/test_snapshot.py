"""Training snapshots (experts/snapshot.py): every training loop, stopped after a step and run again
from its snapshot, ends with the weights and curves of a run that was never stopped, bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from byo_fixtures import chat_tokenizer, deepseek_v3
from transformers import AutoModelForCausalLM

from distill.opd import OPDConfig, train_opd
from distill.train import DistillConfig, train_student
from domains import get_domain
from experts.model import ModelConfig, build_model
from experts.pretrained import ready_tokenizer
from experts.rl import RLConfig, train_grpo
from experts.sft import TrainConfig, train_sft
from experts.snapshot import Snapshot
from experts.tokenizer import train_tokenizer
from experts.warmup import WarmupConfig, warmup_indexer
from generation.types import SamplingConfig

# index_topk past every sequence: the sparse forward of warm-up's evaluation then does not depend on
# the batch's padded width (tests/test_opd.py).
TINY = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, index_topk=256, max_position_embeddings=256)


class Stop(Exception):
    """What stops a loop from its progress callback: a kill, as far as the loop can tell."""


pytestmark = pytest.mark.usefixtures("one_thread")  # bit-for-bit equality needs one reduction order


@pytest.fixture(scope="module")
def tiny():
    """A tokenizer, math tasks, and a model that has learnt two of their worked solutions (so GRPO's groups disagree)."""
    tasks = [t for t in get_domain("math").make_tasks(40, seed=1) if "Answer" in t["completion"]][:6]
    tok = train_tokenizer([t["prompt"] + t["completion"] for t in tasks] * 4, 300)
    model = build_model(TINY, tok, seed=1)
    train_sft(model, tok, tasks[:2], TrainConfig(steps=200, batch_size=2, lr=3e-3, warmup_steps=0), seed=0)
    return tok, tasks, model.eval().state_dict()


def stopped_and_resumed(tmp_path, start: Callable[[], torch.nn.Module], train: Callable, stop_at: int):
    """(uninterrupted result and weights, resumed result and weights, the snapshot) of `train(model, snapshot, progress)`."""
    model = start()
    expected = train(model, None, None)
    snapshot = Snapshot(tmp_path / "phase.pt", every_s=0)

    def stop(step: int, total: int, value: float) -> None:
        if step == stop_at:
            raise Stop

    with pytest.raises(Stop):
        train(start(), snapshot, stop)
    assert snapshot.load()["step"] == stop_at and snapshot.load()["optimizer"] is not None
    resumed = start()
    got = train(resumed, Snapshot(snapshot.path, every_s=0), None)
    return (expected, model.state_dict()), (got, resumed.state_dict()), snapshot


def assert_same(a: tuple, b: tuple) -> None:
    (result_a, weights_a), (result_b, weights_b) = a, b
    assert result_a == result_b
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_sft_resumes_mid_epoch(tmp_path, tiny):
    tok, tasks, _ = tiny
    cfg = TrainConfig(steps=7, batch_size=2, lr=3e-3, warmup_steps=2)  # 3 batches an epoch: step 4 is inside the second
    expected, got, snapshot = stopped_and_resumed(
        tmp_path, lambda: build_model(TINY, tok, seed=2), lambda m, s, p: train_sft(m, tok, tasks, cfg, seed=0, progress=p, snapshot=s), 4)
    assert_same(expected, got)
    assert snapshot.load()["step"] == 7 and snapshot.load()["optimizer"] is None  # a finished phase keeps no optimizer state


def test_a_finished_phase_is_not_trained_again(tmp_path, tiny):
    tok, tasks, _ = tiny
    cfg = TrainConfig(steps=3, batch_size=2, lr=3e-3, warmup_steps=0)
    snapshot = Snapshot(tmp_path / "sft.pt", every_s=3600)  # saved only at the phase's end
    first = build_model(TINY, tok, seed=2)
    losses = train_sft(first, tok, tasks, cfg, seed=0, snapshot=snapshot)
    steps = []
    again = build_model(TINY, tok, seed=2)
    assert train_sft(again, tok, tasks, cfg, seed=0, snapshot=snapshot, progress=lambda s, n, v: steps.append(s)) == losses
    assert steps == [] and all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


def test_student_distillation_resumes(tmp_path, tiny):
    tok, tasks, _ = tiny
    rows = [{"domain": "math", "prompt": t["prompt"], "completion": t["completion"]} for t in tasks]
    # Batches of one: an epoch's order is all the generator decides (length grouping fixes larger batches' members).
    cfg = DistillConfig(steps=8, batch_size=1, lr=3e-3, warmup_steps=2, max_len=256)
    expected, got, _ = stopped_and_resumed(
        tmp_path, lambda: build_model(TINY, tok, seed=2), lambda m, s, p: train_student(m, tok, rows, cfg, seed=0, progress=p, snapshot=s), 3)
    assert_same(expected, got)
    assert set(got[0]) == {"loss", "ce", "tokens"} and len(got[0]["loss"]) == 8


def test_grpo_resumes_between_rounds_and_keeps_its_reference(tmp_path, tiny):
    tok, tasks, trained = tiny

    def start():
        model = build_model(TINY, tok, seed=1)
        model.load_state_dict(trained)
        return model

    # Hot sampling of the two tasks the model knows: some samples miss, so groups disagree and rounds update the weights.
    cfg = RLConfig(steps=3, prompts_per_step=1, group_size=8, minibatch_size=4, lr=1e-3, warmup_updates=0,
                   sampling=SamplingConfig(temperature=1.3, max_new_tokens=24))
    expected, got, _ = stopped_and_resumed(tmp_path, start, lambda m, s, p: train_grpo(m, tok, tasks[:2], cfg, seed=0, progress=p, snapshot=s), 1)
    assert_same(expected, got)
    assert not all(torch.equal(trained[k], got[1][k]) for k in trained), "no round updated the weights: the test would prove nothing"


def test_opd_resumes_between_rounds(tmp_path, tiny):
    tok, tasks, trained = tiny
    teacher = build_model(TINY, tok, seed=1)
    teacher.load_state_dict(trained)
    cfg = OPDConfig(steps=3, prompts_per_step=2, samples_per_prompt=2, minibatch_size=4, lr=3e-3, warmup_updates=0,
                    sampling=SamplingConfig(temperature=1.0, max_new_tokens=16))
    expected, got, _ = stopped_and_resumed(
        tmp_path, lambda: build_model(TINY, tok, seed=2),
        lambda m, s, p: train_opd(m, tok, {"math": teacher.eval()}, {"math": tasks}, cfg, seed=0, progress=p, snapshot=s), 2)
    assert_same(expected, got)  # the curves and the last round's rows, which the warm-up after OPD trains on
    assert len(got[0][1]) == 4


def test_indexer_warmup_resumes(tmp_path, tiny):
    tok, tasks, trained = tiny
    examples = [{"prompt": t["prompt"], "completion": t["completion"]} for t in tasks]
    cfg = WarmupConfig(steps=5, batch_size=2, lr=2e-3, eval_examples=2)

    def start():
        model = build_model(TINY, tok, seed=1)
        model.load_state_dict(trained)
        return model

    expected, got, _ = stopped_and_resumed(tmp_path, start, lambda m, s, p: warmup_indexer(m, tok, examples, cfg, seed=0, progress=p, snapshot=s), 3)
    assert_same(expected, got)


def test_data_parallel_training_resumes_a_single_process_snapshot(tmp_path):
    """Two torchrun processes go on from a snapshot that one process saved: the same state under the
    names of the model DDP wraps, and the curve of a run that was never stopped, to the float32
    reduction order (tests/test_distributed.py)."""
    checkpoint = deepseek_v3(tmp_path / "v3")
    tokenizer = ready_tokenizer(chat_tokenizer(), "fixture")
    rows = [{"prompt": f"What is {a} + {b}?", "completion": f"The answer is {a + b}."} for a in range(10) for b in range(6)]
    cfg = TrainConfig(steps=6, batch_size=8, lr=3e-3, warmup_steps=0)
    single = train_sft(AutoModelForCausalLM.from_pretrained(checkpoint), tokenizer, rows, cfg, seed=0)
    snapshot = Snapshot(tmp_path / "sft.pt", every_s=0)

    def stop(step: int, total: int, value: float) -> None:
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        train_sft(AutoModelForCausalLM.from_pretrained(checkpoint), tokenizer, rows, cfg, seed=0, progress=stop, snapshot=snapshot)
    seen = []
    parallel = train_sft(AutoModelForCausalLM.from_pretrained(checkpoint), tokenizer, rows, cfg.model_copy(update={"devices": 2}), seed=0,
                         progress=lambda s, n, loss: seen.append(s), snapshot=snapshot)
    assert parallel[:3] == single[:3]  # the snapshot's own steps
    assert max(abs(a - b) for a, b in zip(single, parallel, strict=True)) <= 1e-5
    assert seen == [4, 5, 6]
