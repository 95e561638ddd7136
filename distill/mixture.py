"""The student's training data: the union of every expert's verified samples."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence


def mix_verified(verified: Mapping[str, Sequence[dict]], seed: int) -> list[dict]:
    """Shuffle all domains' verified rows together, keeping (domain, task, prompt, completion)."""
    rows = [
        {"domain": domain, "task_id": r["task_id"], "prompt": r["prompt"], "completion": r["completion"]}
        for domain, domain_rows in sorted(verified.items())
        for r in domain_rows
    ]
    random.Random(seed).shuffle(rows)
    return rows
