"""On-policy distillation: its loss against the reverse KL written out by hand, its gradient, and
real rounds on tiny models (the student moves toward the teacher on its own samples)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distill.losses import opd_loss
from distill.opd import OPDConfig, _update, token_logprobs_all, train_opd
from domains import get_domain
from experts.model import ModelConfig, build_model
from experts.rl import completion_batch
from experts.sft import TrainConfig, gradient_checkpointing, train_sft
from experts.tokenizer import train_tokenizer
from flows.config import load_config
from flows.plan import plan
from generation.backends import generate
from generation.types import EngineConfig, Request, SamplingConfig

REPO = Path(__file__).resolve().parent.parent
# Top-k covers every sequence: past index_topk, exact ties at the k-th indexer score are broken by row length,
# so the sparse forward depends on the batch's padded width (docs/experiments.md), which is not what these tests test.
TINY = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, index_topk=256, max_position_embeddings=256)


def test_opd_loss_is_the_reverse_kl_written_out_by_hand():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5) * 2
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    total = 0.0
    for n in range(2):
        for t in range(3):
            if mask[n, t]:
                q, p = torch.softmax(student[n, t], -1).tolist(), torch.softmax(teacher[n, t], -1).tolist()
                total += sum(qv * (math.log(qv) - math.log(pv)) for qv, pv in zip(q, p))
    s, te = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    assert opd_loss(s, te, mask).item() == pytest.approx(total / 4, rel=1e-5)
    assert opd_loss(s, te, mask, normalizer=8.0).item() == pytest.approx(total / 8, rel=1e-5)
    assert opd_loss(s, s.clone(), mask).item() == pytest.approx(0.0, abs=1e-7)  # student = teacher


def test_only_the_sampled_positions_carry_gradient():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 6, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(2, 4, 6), -1)
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]])
    opd_loss(torch.log_softmax(logits, -1), teacher, mask).backward()
    per_position = logits.grad.abs().sum(-1)
    assert torch.all(per_position[mask == 0] == 0) and torch.all(per_position[mask == 1] > 0)


@pytest.fixture(scope="module")
def tiny():
    """A tokenizer, two math tasks, a teacher that has learnt their worked solutions and an untrained student of the same vocabulary."""
    tasks = [t for t in get_domain("math").make_tasks(20, seed=1) if "Answer" in t["completion"]][:2]
    tok = train_tokenizer([t["prompt"] + t["completion"] for t in tasks] * 4, 300)
    teacher = build_model(TINY, tok, seed=1)
    train_sft(teacher, tok, tasks, TrainConfig(steps=150, batch_size=2, lr=3e-3, warmup_steps=0), seed=0)
    return tok, tasks, teacher.eval()


def _samples(model, tok, tasks, n: int, seed: int):
    requests = [Request(t["prompt"]) for t in tasks for _ in range(n)]
    return generate(model, tok, requests, SamplingConfig(temperature=1.0, max_new_tokens=16), EngineConfig(), seed=seed)


def test_micro_batches_accumulate_the_minibatch_gradient(tiny):
    tok, tasks, teacher = tiny
    student = build_model(TINY, tok, seed=2)
    completions = _samples(student, tok, tasks, 3, seed=0)
    samples = [("math", tasks[i // 3], c) for i, c in enumerate(completions)]
    sampled_tokens = int(completion_batch(tok, completions)[2].sum())
    grads = []
    for micro in (1, 4, len(samples)):
        student.zero_grad(set_to_none=True)
        loss, tokens = _update(student, tok, {"math": teacher}, samples, micro)
        assert tokens == sampled_tokens > 0  # every sampled token counted once, however the minibatch is split
        # The indexer takes no part in a dense forward: its parameters get no gradient.
        grads.append((loss, {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}))
    (whole, g_whole), *parts = reversed(grads)
    assert any(g.abs().sum() > 0 for g in g_whole.values())
    for loss, g in parts:
        assert loss == pytest.approx(whole, rel=1e-5) and g.keys() == g_whole.keys()
        assert all(torch.allclose(g[n], g_whole[n], atol=1e-6, rtol=1e-4) for n in g)


def test_rounds_move_the_student_toward_the_teacher_on_its_own_samples(tiny):
    tok, tasks, teacher = tiny
    student = build_model(TINY, tok, seed=2)

    def reverse_kl(model) -> float:
        """The loss OPD minimises, on fresh samples of `model` (seeded: the same draws every call)."""
        ids, attn, sampled = completion_batch(tok, _samples(model, tok, tasks, 4, seed=99))
        with torch.no_grad():
            return opd_loss(token_logprobs_all(model, ids, attn), token_logprobs_all(teacher, ids, attn), sampled).item()

    before = reverse_kl(student)
    cfg = OPDConfig(steps=10, prompts_per_step=2, samples_per_prompt=4, minibatch_size=8, lr=3e-3, warmup_updates=0,
                    sampling=SamplingConfig(temperature=1.0, max_new_tokens=16))
    curves, rows = train_opd(student, tok, {"math": teacher}, {"math": tasks}, cfg, seed=0)
    after = reverse_kl(student)
    assert len(curves["loss"]) == len(curves["verified_math"]) == len(curves["tokens"]) == 10 and len(rows) == 8
    assert all(0 < n <= 8 * 16 for n in curves["tokens"])  # 8 samples a round of at most 16 new tokens each
    assert {r["domain"] for r in rows} == {"math"} and all(r["prompt"] in {t["prompt"] for t in tasks} for r in rows)
    print(f"reverse KL to the teacher on fresh samples: {before:.3f} -> {after:.3f}")
    # 0.833 -> 0.490 with the tokenizer before the reasoning markers, 0.551 -> 0.432 with them (another draw of
    # both models); without OPD the same fresh samples give the same value, so any real fall shows.
    assert after < 0.85 * before, (before, after)
    with pytest.raises(ValueError, match="no teacher for domain"):
        train_opd(student, tok, {"math": teacher}, {"math": tasks, "code": tasks}, cfg, seed=0)


def test_opd_settings_rerun_only_opd_and_what_reads_it():
    tiny = REPO / "configs" / "tiny.yaml"
    before = {k: v.id for k, v in plan(load_config(tiny)).items()}
    after = {k: v.id for k, v in plan(load_config(tiny, ["opd.lr=1e-5"])).items()}
    downstream = {("mixed_rl", None, "model"), ("evaluate", None, "scores"), ("report", None, "report")}  # mixed RL starts from OPD's student
    assert {k for k in before if before[k] != after[k]} == {("opd", None, "model"), *downstream}
    off = {k: v.id for k, v in plan(load_config(tiny, ["opd.steps=0"])).items()}
    assert ("opd", None, "model") not in off and off.keys() == before.keys() - {("opd", None, "model")}
    assert {k for k in off if off[k] != before[k]} == downstream


def test_mixed_rl_starts_from_the_last_student_and_reruns_alone():
    tiny = REPO / "configs" / "tiny.yaml"
    p = plan(load_config(tiny))
    assert p[("mixed_rl", None, "model")].parents[0] == p[("opd", None, "model")].id  # after OPD
    alone = plan(load_config(tiny, ["opd.steps=0"]))
    assert alone[("mixed_rl", None, "model")].parents[0] == alone[("distill", None, "model")].id
    after = {k: v.id for k, v in plan(load_config(tiny, ["mixed_rl.lr=1e-5"])).items()}
    assert {k for k, v in p.items() if v.id != after[k]} == {("mixed_rl", None, "model"), ("evaluate", None, "scores"), ("report", None, "report")}


def test_checkpointing_and_bf16_keep_the_gradient(tiny):
    """Gradient checkpointing recomputes each layer in the backward (its forward runs twice) and gives
    the same gradient; bf16 autocast gives the gradient to bfloat16's precision."""
    tok, tasks, teacher = tiny
    student = build_model(TINY, tok, seed=2)
    samples = [("math", tasks[i // 2], c) for i, c in enumerate(_samples(student, tok, tasks, 2, seed=0))]
    student.train()  # checkpointing acts in train mode only, as in train_opd's updates
    calls = []
    student.model.layers[0].self_attn.register_forward_hook(lambda *_: calls.append(1))  # inside the checkpointed forward

    def gradient(precision: str = "fp32") -> tuple[float, torch.Tensor]:
        student.zero_grad(set_to_none=True)
        calls.clear()
        loss, _ = _update(student, tok, {"math": teacher}, samples, 2, precision)
        return loss, torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])

    loss, grad = gradient()
    assert len(calls) == 2  # two micro-batches, one forward each
    with gradient_checkpointing(student):
        loss_ckpt, grad_ckpt = gradient()
    assert len(calls) == 4  # and once more in each backward
    assert loss_ckpt == pytest.approx(loss, rel=1e-6) and torch.allclose(grad_ckpt, grad, atol=1e-7, rtol=1e-5)
    loss_bf16, grad_bf16 = gradient("bf16")
    cosine = torch.nn.functional.cosine_similarity(grad_bf16, grad, dim=0).item()
    assert loss_bf16 == pytest.approx(loss, rel=0.02) and cosine > 0.99, (loss_bf16, loss, cosine)
