"""Rejection sampling: keep the generations the domain's verifier accepts, the rest with the reason."""

from __future__ import annotations

from collections.abc import Sequence

from experts.domains import get_domain


def verify_rows(domain_name: str, rows: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """Split generations into (verified, rejected); duplicates of an accepted completion are dropped."""
    domain = get_domain(domain_name)
    verified, rejected, seen = [], [], set()
    for row in rows:
        verdict = domain.verify(row, row["completion"])
        out = {**row, "score": verdict.score, "reason": verdict.reason}
        if not verdict.ok:
            rejected.append(out)
        elif (row["task_id"], row["completion"]) not in seen:
            seen.add((row["task_id"], row["completion"]))
            verified.append(out)
    return verified, rejected
