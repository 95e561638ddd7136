"""The top-level seed reaches every stage: the same seed twice gives the same data, another seed other batches and samples."""

from __future__ import annotations

import pytest
from prefect.testing.utilities import prefect_test_harness

from data import tables
from data.catalog import Catalog
from flows.base import base
from flows.config import load_config
from flows.dsa_warmup import dsa_warmup
from flows.generate import generate
from flows.plan import plan
from flows.prepare import prepare
from flows.train_expert import train_expert
from flows.verify import verify

pytestmark = pytest.mark.slow

# One domain, a few steps of everything: what is compared is determinism, not quality.
MICRO = [
    "domains=[math]", "prepare.seed_tasks=64", "prepare.prompt_tasks=8", "prepare.eval_tasks=8", "base.steps=20", "expert.steps=20",
    "dsa_warmup.steps=2", "dsa_warmup.eval_examples=4", "generate.samples_per_prompt=2", "generate.sampling.max_new_tokens=24",
    "per_domain.math.rl.steps=0",
]


def branch(root, seed: int) -> dict:
    """Run prepare ... verify for math into `root`; (stage, name) -> the artifact's record."""
    config = load_config("configs/smoke.yaml", [*MICRO, f"run_root={root}", f"seed={seed}"])
    prepare(config)
    base(config)
    for stage in (train_expert, dsa_warmup, generate, verify):
        stage("math", config)
    catalog = Catalog(root)
    return {(k[0], k[2]): catalog.get(item.id) for k, item in plan(config, catalog).items() if k[0] in ("prepare", "base", "train_expert", "generate", "verify")}


# Nightly (`pytest -m nightly`), not CI: the suite is over CI's 25-minute budget with it (docs/experiments.md, 2026-12-06).
@pytest.mark.nightly
def test_seed_makes_runs_reproducible_and_distinct(tmp_path):
    with prefect_test_harness(server_startup_timeout=120):
        first, again, other = branch(tmp_path / "a", 0), branch(tmp_path / "b", 0), branch(tmp_path / "c", 1)
    datasets = [k for k, r in first.items() if r.kind == "dataset"]
    # Seed 0 twice, two roots: the same values in every dataset, the same training curves.
    for key in datasets:
        assert tables.digest(tables.read_table(Catalog(tmp_path / "a").resolve(first[key]))) == \
            tables.digest(tables.read_table(Catalog(tmp_path / "b").resolve(again[key]))), key
    assert first[("train_expert", "model")].metrics["loss_curve"] == again[("train_expert", "model")].metrics["loss_curve"]
    # Seed 1: other tasks, other expert batches (its loss curve), other samples.
    assert first[("prepare", "seed")].digest != other[("prepare", "seed")].digest
    assert first[("train_expert", "model")].metrics["loss_curve"] != other[("train_expert", "model")].metrics["loss_curve"]
    completions = [[r["completion"] for r in tables.read_rows(Catalog(root).resolve(run[("generate", "generations")]))] for root, run in ((tmp_path / "a", first), (tmp_path / "c", other))]
    assert completions[0] != completions[1]


def test_the_experts_batches_follow_the_seed():
    """Same base, same data: the expert's seed alone decides its batches (and so its loss curve)."""
    from domains import get_domain
    from experts.model import ModelConfig, build_model
    from experts.sft import TrainConfig, train_sft
    from experts.tokenizer import train_tokenizer

    tasks = get_domain("math").make_tasks(64, seed=0)
    tok = train_tokenizer([t["prompt"] + t["completion"] for t in tasks], 300)
    cfg = TrainConfig(steps=6, batch_size=4)

    def curve(seed: int) -> list[float]:
        model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, seed=0)
        return train_sft(model, tok, tasks, cfg, seed=load_config(None, [f"seed={seed}"]).seed_for("train_expert", "math"))

    assert curve(0) == curve(0) != curve(1)
