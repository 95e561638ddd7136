from __future__ import annotations

from collections import Counter

import pyarrow as pa
from prefect import flow

from experts.verify import verify_rows
from flows.artifacts import load_table, run_stage, save_rows
from flows.config import PipelineConfig, default_config


@flow(name="verify", log_prints=True)
def verify(domain: str, config: PipelineConfig = default_config()) -> str:
    """Check every generation with the domain's verifier; rejected samples keep their reason."""

    def compute(catalog, p, items):
        generations = load_table(catalog, p[("generate", domain, "generations")])
        rows = generations.to_pylist()
        verified, rejected = verify_rows(domain, rows)
        # The rejects may be empty: both datasets share the generations' schema (its narrow token
        # and log-prob types included) plus the verdict.
        schema = generations.schema.remove_metadata().append(pa.field("score", pa.float64())).append(pa.field("reason", pa.string()))
        reasons = Counter(r["reason"] for r in rejected)
        return [
            save_rows(catalog, items["verified"], verified, schema=schema, accept_rate=1 - len(rejected) / len(rows)),
            save_rows(catalog, items["rejected"], rejected, schema=schema, **{f"reason_{k}": v for k, v in sorted(reasons.items())}),
        ]

    return run_stage(config, "verify", domain, compute)[0].id
