from __future__ import annotations

from prefect import flow

from domains.corpus import build_index
from domains.sources import read_records
from flows.artifacts import StageRun, run_stage
from flows.config import PipelineConfig, resolve
from flows.stages import STAGES


@flow(name="index", log_prints=True)
def index(config: PipelineConfig | None = None, domain: str | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> list[str]:
    """Index the corpus each `qa` task source searches (bm25s), once per corpus content (all such domains, or `domain`)."""
    config = resolve(config, config_file, overrides)
    ids = []
    for d in [domain] if domain else STAGES["index"].domains(config):

        def compute(run: StageRun, d: str = d) -> list:
            corpus = config.prepare.sources[d].corpus
            records = read_records(corpus)
            return [run.save_files("index", lambda directory: build_index(records, directory, source=corpus), documents=len(records))]

        ids += [r.id for r in run_stage(config, "index", d, compute)]
    return ids
