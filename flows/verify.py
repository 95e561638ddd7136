from __future__ import annotations

import pyarrow as pa
from prefect import flow

from data.catalog import Catalog
from experts.verify import verify_rows
from flows.artifacts import existing, load_rows, publish, save_rows
from flows.config import PipelineConfig, default_config
from flows.plan import outputs, plan


@flow(name="verify", log_prints=True)
def verify(domain: str, config: PipelineConfig = default_config()) -> str:
    """Check every generation with the domain's verifier; rejected samples keep their reason."""
    catalog, p = Catalog(config.run_root), plan(config)
    items = {i.name: i for i in outputs(p, "verify", domain)}
    records = existing(catalog, list(items.values()))
    if records is None:
        rows = load_rows(catalog, p[("generate", domain, "generations")])
        verified, rejected = verify_rows(domain, rows)
        schema = pa.Table.from_pylist(verified + rejected).schema
        reasons: dict[str, int] = {}
        for r in rejected:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        accept = 1 - len(rejected) / len(rows)
        records = [
            save_rows(catalog, items["verified"], verified, schema=schema, accept_rate=accept),
            save_rows(catalog, items["rejected"], rejected, schema=schema, **{f"reason_{k}": v for k, v in reasons.items()}),
        ]
        publish("verify", domain, records, skipped=False)
    else:
        publish("verify", domain, records, skipped=True)
    return records[0].id
