"""The package layout of docs/architecture.md: the import contracts hold, and catch a violation; the turn logic lives in one module."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINT = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"]


def test_import_contracts_hold(source_copy):
    _, run = source_copy
    out = run("-c", f"import subprocess, sys; sys.exit(subprocess.call({LINT!r}))")
    assert "3 kept, 0 broken" in out.stdout, out.stdout


def test_import_contracts_catch_an_upward_import(source_copy):
    root, run = source_copy
    kernel = root / "kernels" / "reference.py"
    kernel.write_text(kernel.read_text() + "\nfrom flows.config import PipelineConfig  # noqa: E402,F401\n")
    out = run("-c", f"import subprocess, sys; sys.exit(subprocess.call({LINT!r}))", check=False)
    assert out.returncode != 0
    assert "BROKEN" in out.stdout and "kernels.reference -> flows.config" in out.stdout, out.stdout


def test_turn_logic_lives_in_one_module():
    """Ending a turn, answering a tool call and building a completion: written once, in generation/turns.py, for every backend."""
    turn_markers = re.compile(r"\b(last_call|RESULT_OPEN|RESULT_CLOSE|CALL_CLOSE|finish_reason = )|\.eos_token_id")
    users = {p.relative_to(REPO).as_posix() for p in (REPO / "generation").rglob("*.py") if turn_markers.search(p.read_text())}
    assert users == {"generation/turns.py"}


def test_flow_modules_read_no_config_when_imported(source_copy):
    """Configs are read when a flow runs (from its parameters), not when a worker imports it."""
    root, run = source_copy
    for config in (root / "configs").iterdir():
        config.unlink()
    modules = ["pipeline", "index", "prepare", "base", "train_expert", "dsa_warmup", "generate", "verify", "mixture", "distill", "baseline", "evaluate", "report", "cli"]
    run("-c", "; ".join(f"import flows.{m}" for m in modules))


def test_stage_flows_take_the_configured_retries():
    from flows.config import load_config
    from flows.generate import generate
    from flows.pipeline import with_retries

    config = load_config(None, ["execution.retries=3", "execution.retry_delay_seconds=0.5"])
    stage = with_retries(generate, config)
    assert (stage.retries, stage.retry_delay_seconds) == (3, 0.5) and stage.fn is generate.fn
