"""Token-level distillation losses over the teacher's stored top-k support, in fp32.

The teacher's full distribution is gone after generation: only its top-k token ids and their
log-probabilities (float16) are stored. Both distributions are therefore compared on the same
small support, built by `teacher_support` / `student_support`:

- tail="bucket": the k tokens plus one "rest" bucket holding 1 - (top-k mass); the teacher's rest
  is what its top-k does not cover (at least MIN_REST), the student's rest is its mass on every
  other token. No mass is dropped.
- tail="drop": both distributions renormalised over the k tokens (the tail is ignored).

The teacher's stored top-k mass is renormalised first: float16 rounding can make it sum a little
above 1, and a distribution that does not sum to 1 makes a KL negative.

Every divergence takes log-probabilities [N, S] over the same support and returns [N] per-token
values. Written from the formulas rather than with `F.kl_div`, whose argument order is the
reverse of the math: `F.kl_div(input=log q, target=p)` is KL(p || q).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Tail = Literal["bucket", "drop"]
# Floor of the teacher's rest mass: a zero rest would make the reverse KL infinite whenever the
# student puts any mass outside the teacher's top-k.
MIN_REST = 1e-6


def teacher_support(topk_logprobs: torch.Tensor, tail: Tail) -> torch.Tensor:
    """Teacher log-probs over the support. [N, K] stored log-probs -> [N, K+1] (bucket) or [N, K] (drop)."""
    lp = topk_logprobs.float()
    if tail == "drop":
        return torch.log_softmax(lp, dim=-1)
    mass = lp.exp().sum(-1, keepdim=True)
    rest = (1.0 - mass).clamp_min(MIN_REST)
    # Renormalise so that top-k + rest sums to exactly 1 (float16 top-k mass can exceed 1).
    total = mass + rest
    return torch.cat([lp - total.log(), rest.log() - total.log()], dim=-1)


def student_support(logits: torch.Tensor, topk_ids: torch.Tensor, tail: Tail) -> torch.Tensor:
    """Student log-probs over the support. logits [N, V], topk_ids [N, K] -> [N, K+1] (bucket) or [N, K] (drop)."""
    logits = logits.float()
    picked = logits.gather(-1, topk_ids.long())
    if tail == "drop":
        return torch.log_softmax(picked, dim=-1)
    lse = logits.logsumexp(-1, keepdim=True)
    # The rest bucket as a logsumexp over the tokens outside the top-k, not log(1 - sum): the
    # subtraction loses all precision when the top-k holds nearly all the mass.
    outside = logits.scatter(-1, topk_ids.long(), float("-inf"))
    return torch.cat([picked - lse, outside.logsumexp(-1, keepdim=True) - lse], dim=-1)


def forward_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || q_student) = Σ p (log p - log q): mass-covering. [N, S] x2 -> [N]."""
    p = teacher_logp.exp()
    # A -inf student log-prob where the teacher has no mass would give 0 * inf = nan.
    return torch.where(p > 0, p * (teacher_logp - student_logp), 0.0).sum(-1)


def reverse_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """KL(q_student || p_teacher) = Σ q (log q - log p): mode-seeking. [N, S] x2 -> [N]."""
    return forward_kl(student_logp, teacher_logp)


def generalized_jsd(teacher_logp: torch.Tensor, student_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalized JSD (GKD, Agarwal et al. 2024, eq. 3): β KL(p || m) + (1-β) KL(q || m), m = β p + (1-β) q.

    β in (0, 1); β = 0.5 is the symmetric Jensen-Shannon divergence. [N, S] x2 -> [N].
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"generalized_jsd needs 0 < beta < 1, got {beta}")
    mix = torch.logsumexp(torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1.0 - beta)]), dim=0)
    return beta * forward_kl(teacher_logp, mix) + (1.0 - beta) * forward_kl(student_logp, mix)


Divergence = Literal["forward_kl", "reverse_kl", "jsd"]


def topk_kd_loss(
    logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, divergence: Divergence, beta: float, tail: Tail
) -> torch.Tensor:
    """Per-token divergence between the student's logits [N, V] and the teacher's top-k ([N, K] ids, [N, K] log-probs) -> [N]."""
    t = teacher_support(topk_logprobs, tail)
    s = student_support(logits, topk_ids, tail)
    if divergence == "forward_kl":
        return forward_kl(t, s)
    if divergence == "reverse_kl":
        return reverse_kl(t, s)
    return generalized_jsd(t, s, beta)


def opd_loss(student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor, normalizer: float | None = None) -> torch.Tensor:
    """On-policy distillation: the per-token reverse KL(student || teacher) over the whole vocabulary,
    summed over the positions `mask` marks (the tokens the student sampled) and divided by
    `normalizer` (default: their count; a minibatch split into micro-batches passes its own count).

    student_logp, teacher_logp: [N, T, V] log-probabilities; mask: [N, T]. Zero exactly when the
    two distributions agree at every marked position; the gradient reaches the student only.
    """
    kl = reverse_kl(teacher_logp, student_logp)  # [N, T]
    return (kl * mask).sum() / (mask.sum().clamp(min=1) if normalizer is None else normalizer)
