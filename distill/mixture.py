"""The student's training data: every expert's verified samples, decontaminated against the eval sets.

Kept as Arrow tables so that the narrow types of the expert's token ids and top-k log-probs
(int16, float16) survive into the mixture dataset.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distill.decontam import overlaps

# What the student needs from a verified row; the top-k columns only exist when the generate
# stage stored teacher log-probs.
COLUMNS = ("task_id", "prompt", "completion", "token_ids", "prompt_len", "topk_ids", "topk_logprobs")


def mix_verified(verified: Mapping[str, pa.Table], seed: int) -> pa.Table:
    """All domains' verified rows in one shuffled table with a `domain` column first."""
    parts = []
    for domain, table in sorted(verified.items()):
        cols = [c for c in COLUMNS if c in table.column_names]
        part = table.select(cols)
        parts.append(part.add_column(0, "domain", pa.array([domain] * part.num_rows, pa.string())))
    # Schemas differ only when some domain lacks a column (e.g. no top-k): fill with nulls.
    mixed = pa.concat_tables(parts, promote_options="permissive")
    return mixed.take(np.random.default_rng(seed).permutation(mixed.num_rows))


def decontaminate_table(table: pa.Table, eval_prompts: Iterable[str], n: int, min_overlap: float) -> tuple[pa.Table, dict[str, int]]:
    """Drop rows whose prompt overlaps the eval prompts (see distill.decontam); per-domain counts as metrics.

    Metrics: `decontam_overlapping_<d>` rows sharing any n-gram, `decontam_removed_<d>` rows dropped.
    """
    if n == 0:
        return table, {}
    share = np.array(overlaps(table.column("prompt").to_pylist(), list(eval_prompts), n))
    domains = np.array(table.column("domain").to_pylist())
    metrics = {}
    for d in sorted(set(domains)):
        mine = domains == d
        metrics[f"decontam_overlapping_{d}"] = int(((share > 0) & mine).sum())
        metrics[f"decontam_removed_{d}"] = int(((share >= min_overlap) & mine).sum())
    metrics["decontam_removed"] = int((share >= min_overlap).sum())
    return table.filter(pc.invert(pa.array(share >= min_overlap))), metrics


def student_mixture(verified: Mapping[str, pa.Table], eval_prompts: Iterable[str], seed: int, n: int, min_overlap: float) -> tuple[pa.Table, dict[str, int]]:
    """The student's data: every domain's verified rows, shuffled, without those overlapping the eval prompts; counts as metrics."""
    mixture, metrics = decontaminate_table(mix_verified(verified, seed), eval_prompts, n, min_overlap)
    if mixture.num_rows == 0:
        raise ValueError("no expert produced a verified sample that survives decontamination: train the experts longer or sample more")
    per_domain = Counter(mixture.column("domain").to_pylist())
    return mixture, {**{f"rows_{d}": per_domain[d] for d in sorted(verified)}, **metrics}
