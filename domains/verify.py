"""Rejection sampling: keep the generations the domain's verifier accepts, the rest with the reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pyarrow as pa

from domains import get_domain


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


def verify_table(domain_name: str, generations: pa.Table) -> tuple[pa.Table, pa.Table, dict, dict]:
    """(verified, rejected, verified's metrics, rejected's metrics) of a generations table.

    Both tables keep the generations' schema (its narrow token and log-prob types included) plus the
    verdict, even when one of them is empty.
    """
    rows = generations.to_pylist()
    verified, rejected = verify_rows(domain_name, rows)
    schema = generations.schema.remove_metadata().append(pa.field("score", pa.float64())).append(pa.field("reason", pa.string()))
    reasons = Counter(r["reason"] for r in rejected)
    return (
        pa.Table.from_pylist(verified, schema=schema),
        pa.Table.from_pylist(rejected, schema=schema),
        {"accept_rate": 1 - len(rejected) / max(1, len(rows))},
        {f"reason_{k}": v for k, v in sorted(reasons.items())},
    )
