"""Per-stage code identity: an artifact's id hashes the source its stage runs, so an edit re-runs only what it can change.

Each test edits a copy of the code and plans there, with that copy first on the path.
"""

from __future__ import annotations

import json

import pytest

from flows.config import load_config
from flows.identity import code_hash, stage_modules
from flows.plan import plan
from flows.stages import STAGES

PLAN = "import json, sys; from flows.config import load_config; from flows.plan import plan; " \
       "print(json.dumps({'|'.join(map(str, k)): v.id for k, v in plan(load_config('configs/smoke.yaml', sys.argv[1:])).items()}))"


def ids(run, *overrides: str) -> dict[str, str]:
    return json.loads(run("-c", PLAN, *overrides).stdout)


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {k for k in before if before[k] != after[k]}


def test_stage_closures_hold_what_each_stage_runs():
    assert "distill.report" in stage_modules("report") and "distill.report" not in stage_modules("evaluate")
    assert "experts.rl" in stage_modules("train_expert") and "experts.rl" not in stage_modules("base")
    math_expert = stage_modules("train_expert", ("math",))
    assert "domains.math" in math_expert and "domains.code" not in math_expert
    assert "domains.code" in stage_modules("evaluate", ("math", "code"))
    # Only the stage's own flow module: plumbing and config files reach identities through parameters.
    assert [m for m in stage_modules("generate", ("agents",)) if m.startswith("flows.")] == ["flows.generate"]


def test_editing_the_report_code_changes_only_the_report(source_copy, tmp_path):
    root, run = source_copy
    overrides = [f"run_root={tmp_path / 'run'}"]
    before = ids(run, *overrides)
    report = root / "distill" / "report.py"
    report.write_text(report.read_text() + "\n# a typo fixed\n")
    assert changed(before, ids(run, *overrides)) == {"report|None|report"}


# Nightly (`pytest -m nightly`), not CI: the suite is over CI's 25-minute budget with it (docs/experiments.md, 2026-12-06).
@pytest.mark.slow  # prepares twice through Prefect
@pytest.mark.nightly
def test_editing_a_domain_reruns_only_what_runs_its_code(source_copy, tmp_path):
    """An edit of domains/math.py re-prepares math (seconds); the same tasks come out, so the base and the other branches keep their ids."""
    root, run = source_copy
    overrides = [f"run_root={tmp_path / 'run'}"]
    run("-m", "flows.cli", "stage", "prepare", "--config", "configs/smoke.yaml", "--set", *overrides)
    before = ids(run, *overrides)
    math = root / "domains" / "math.py"
    math.write_text(math.read_text() + "\n# a verifier comment\n")
    run("-m", "flows.cli", "stage", "prepare", "--domain", "math", "--config", "configs/smoke.yaml", "--set", *overrides)
    after = ids(run, *overrides)
    math_branch = {f"{s}|math|{n}" for s, n in [("prepare", "seed"), ("prepare", "prompts"), ("prepare", "eval"), ("train_expert", "model"),
                                                  ("dsa_warmup", "model"), ("generate", "generations"), ("verify", "verified"), ("verify", "rejected")]}
    downstream = {"mixture|None|mixture", "distill|None|model", "evaluate|None|scores", "report|None|report"}
    assert changed(before, after) == math_branch | downstream


def test_every_stage_has_a_flow_module_in_the_closure():
    config = load_config()
    p = plan(config)
    assert {s for s, _, _ in p} == {name for name, stage in STAGES.items() if stage.domains(config)}  # the index: corpus sources only
    assert all(item.code for item in p.values())
    assert all(code_hash(name) for name in STAGES)
