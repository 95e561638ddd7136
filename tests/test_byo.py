"""configs/byo.yaml end to end: a pretrained DeepseekV3 base adopted, LoRA experts, their conversion to
DSA, sparse generation, verification, and a Qwen2 student of another vocabulary, on stand-ins that
tests/byo_fixtures.py writes in the real formats."""

from __future__ import annotations

import time

import pytest
import torch
from byo_fixtures import byo_fixtures
from datasets import load_dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from data.catalog import Catalog
from data.lineage_view import render_tree
from flows.cli import main
from flows.config import load_config
from flows.plan import plan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    fixtures = byo_fixtures(tmp_path_factory.mktemp("byo-fixtures"))
    root = tmp_path_factory.mktemp("byo") / "run"
    overrides = [f"run_root={root}", f"prepare.sources.math.path={fixtures / 'gsm8k.jsonl'}", f"prepare.sources.code.path={fixtures / 'mbpp'}",
                 f"model.pretrained={fixtures / 'deepseek-v3'}", f"distill.student.pretrained={fixtures / 'qwen2-student'}"]
    started = time.monotonic()
    assert main(["run", "--config", "configs/byo.yaml", *(a for o in overrides for a in ("--set", o))]) == 0
    return load_config("configs/byo.yaml", overrides), fixtures, time.monotonic() - started


def _weights(directory) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(directory.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_every_artifact_loads_with_the_stock_loaders(run):
    config, fixtures, seconds = run
    print(f"configs/byo.yaml: {seconds:.0f} s")
    catalog = Catalog(config.run_root)
    for item in plan(config).values():
        record = catalog.find(item.id)
        assert record is not None, item
        path = catalog.resolve(record)
        if record.kind == "dataset" and record.rows:
            assert load_dataset("parquet", data_files=str(path), split="train").num_rows == record.rows
        elif record.kind == "checkpoint":
            AutoModelForCausalLM.from_pretrained(path)


def test_the_recipe_ran_on_the_pretrained_models(run):
    config, fixtures, _ = run
    catalog = Catalog(config.run_root)
    planned = {k: catalog.get(v.id) for k, v in plan(config).items()}
    base = planned[("base", None, "model")]
    assert base.metrics["pretrained"] == str(fixtures / "deepseek-v3") and base.metrics["weights_sha256"]
    assert (catalog.resolve(base) / "model.safetensors").is_symlink()  # adopted, not copied
    student = planned[("distill", None, "model")]
    tree = render_tree(catalog.ancestry(student.id))
    assert f"adopted from pretrained {fixtures / 'deepseek-v3'}" in tree  # the student's lineage names the source
    for d in config.domains:
        sft = catalog.resolve(planned[("train_expert", d, "model")])
        expert = catalog.resolve(planned[("dsa_warmup", d, "model")])
        assert type(AutoModelForCausalLM.from_pretrained(sft)).__name__ == "DeepseekV3ForCausalLM"
        assert type(AutoModelForCausalLM.from_pretrained(expert)).__name__ == "DeepseekV32ForCausalLM"
        before, after = _weights(sft), _weights(expert)
        assert not any("lora" in k for k in before)  # LoRA merged into the saved expert
        assert all(torch.equal(after[k], v) for k, v in before.items())  # the conversion added the indexer, changed nothing else
        assert planned[("dsa_warmup", d, "model")].metrics["attention"] == "dsa"
        assert planned[("generate", d, "generations")].rows > 0
    assert planned[("verify", "math", "verified")].rows + planned[("verify", "code", "verified")].rows > 0
    assert type(AutoModelForCausalLM.from_pretrained(catalog.resolve(student))).__name__ == "Qwen2ForCausalLM"
    assert student.metrics["attention"] == "dense"
    report = (catalog.root / "report.md").read_text()
    assert "expert:math dsa (deepseek_v3, converted)" in report and "student dense (qwen2)" in report
