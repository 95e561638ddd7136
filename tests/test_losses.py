"""The distillation losses against their plain formulas, on fresh random inputs of several shapes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.losses import MIN_REST, forward_kl, generalized_jsd, reverse_kl, student_support, teacher_support, topk_kd_loss

SHAPES = [(1, 8, 3), (7, 50, 5), (33, 512, 20)]  # (tokens N, vocab V, top-k K)


def random_case(n: int, v: int, k: int, seed: int):
    """Teacher and student logits [N, V] and the teacher's top-k ids / log-probs as generation stores them."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, v, generator=g) * 3
    student = torch.randn(n, v, generator=g) * 3
    lp, ids = torch.log_softmax(teacher, -1).topk(k, dim=-1)
    return teacher, student, ids, lp.half()


def dist(n: int, s: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(s), size=n)


@pytest.mark.parametrize("n, s", [(1, 2), (5, 9), (40, 21)])
def test_divergences_match_formulas(n, s):
    p, q = dist(n, s, n), dist(n, s, n + 1)
    lp, lq = torch.tensor(np.log(p)), torch.tensor(np.log(q))
    fkl = (p * np.log(p / q)).sum(-1)
    rkl = (q * np.log(q / p)).sum(-1)
    torch.testing.assert_close(forward_kl(lp, lq), torch.tensor(fkl))
    torch.testing.assert_close(reverse_kl(lp, lq), torch.tensor(rkl))
    # The kl_div pitfall: its first argument is the *second* distribution of the KL.
    torch.testing.assert_close(F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1), torch.tensor(fkl))
    for beta in (0.1, 0.5, 0.9):
        m = beta * p + (1 - beta) * q
        jsd = beta * (p * np.log(p / m)).sum(-1) + (1 - beta) * (q * np.log(q / m)).sum(-1)
        torch.testing.assert_close(generalized_jsd(lp, lq, beta), torch.tensor(jsd))


def test_jsd_half_is_symmetric_and_beta_is_checked():
    lp, lq = torch.tensor(np.log(dist(4, 6, 0))), torch.tensor(np.log(dist(4, 6, 1)))
    torch.testing.assert_close(generalized_jsd(lp, lq, 0.5), generalized_jsd(lq, lp, 0.5))
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(lp, lq, 1.0)


@pytest.mark.parametrize("n, v, k", SHAPES)
def test_bucket_support_matches_formula(n, v, k):
    _, student, ids, lp = random_case(n, v, k, seed=v)
    p_top = lp.double().exp().numpy()
    rest = np.maximum(1 - p_top.sum(-1, keepdims=True), MIN_REST)
    expected_t = np.concatenate([p_top, rest], -1) / (p_top.sum(-1, keepdims=True) + rest)
    q = torch.softmax(student.double(), -1).numpy()
    q_top = np.take_along_axis(q, ids.numpy(), -1)
    expected_s = np.concatenate([q_top, 1 - q_top.sum(-1, keepdims=True)], -1)
    t, s = teacher_support(lp, "bucket"), student_support(student, ids, "bucket")
    assert t.dtype == s.dtype == torch.float32 and t.shape == s.shape == (n, k + 1)
    np.testing.assert_allclose(t.exp().numpy(), expected_t, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(s.exp().numpy(), expected_s, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(t.exp().sum(-1).numpy(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("n, v, k", SHAPES)
def test_drop_support_renormalises_topk(n, v, k):
    _, student, ids, lp = random_case(n, v, k, seed=v + 1)
    p_top = lp.double().exp().numpy()
    q_top = np.take_along_axis(torch.softmax(student.double(), -1).numpy(), ids.numpy(), -1)
    np.testing.assert_allclose(teacher_support(lp, "drop").exp().numpy(), p_top / p_top.sum(-1, keepdims=True), rtol=1e-4)
    np.testing.assert_allclose(student_support(student, ids, "drop").exp().numpy(), q_top / q_top.sum(-1, keepdims=True), rtol=1e-4)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_full_vocabulary_topk_is_the_full_divergence(divergence):
    # With k = V nothing is cut: the loss is the divergence of the full distributions.
    n, v = 6, 40
    teacher, student, ids, _ = random_case(n, v, v, seed=3)
    lp = torch.log_softmax(teacher, -1).gather(-1, ids)
    p, q = torch.softmax(teacher.double(), -1).numpy(), torch.softmax(student.double(), -1).numpy()
    full = {
        "forward_kl": (p * np.log(p / q)).sum(-1),
        "reverse_kl": (q * np.log(q / p)).sum(-1),
        "jsd": 0.3 * (p * np.log(p / (0.3 * p + 0.7 * q))).sum(-1) + 0.7 * (q * np.log(q / (0.3 * p + 0.7 * q))).sum(-1),
    }[divergence]
    got = topk_kd_loss(student, ids, lp, divergence, beta=0.3, tail="drop")
    np.testing.assert_allclose(got.numpy(), full, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n, v, k", SHAPES)
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("tail", ["bucket", "drop"])
def test_loss_is_zero_at_the_teacher_and_has_finite_gradients(n, v, k, divergence, tail):
    teacher, student, ids, lp = random_case(n, v, k, seed=k)
    at_teacher = topk_kd_loss(teacher, ids, torch.log_softmax(teacher, -1).gather(-1, ids), divergence, 0.5, tail)
    torch.testing.assert_close(at_teacher, torch.zeros(n), atol=1e-5, rtol=0)
    student.requires_grad_(True)
    loss = topk_kd_loss(student, ids, lp, divergence, 0.5, tail)
    assert loss.shape == (n,) and bool((loss >= -1e-6).all())
    loss.mean().backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_teacher_mass_above_one_is_renormalised():
    # float16 rounding of a peaked teacher: stored top-k mass slightly above 1.
    lp = torch.tensor([[-0.0001, -9.0, -9.5]]).half()
    t = teacher_support(lp, "bucket")
    assert abs(t.exp().sum().item() - 1.0) < 1e-6 and t.exp()[0, -1].item() > 0
    student = torch.randn(1, 10)
    assert torch.isfinite(topk_kd_loss(student, torch.tensor([[0, 1, 2]]), lp, "reverse_kl", 0.5, "bucket")).all()
