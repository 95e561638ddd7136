"""End to end through Prefect's deployment machinery (tests/prefect_stack.py: a throwaway
`prefect server`, the work pool, `prefect deploy --all` from prefect.yaml, a process worker), as a
user drives it: the `pipeline/pipeline` deployment run through the API on configs/micro.yaml, and
a stage run from the UI in Debian's Chromium.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml
from prefect_stack import REPO, Stack, flow_runs_below

pytestmark = pytest.mark.slow

# configs/micro.yaml with one domain (the machinery under test is the same for two) takes about a
# minute on 2 idle cores; allow for a busy machine.
RUN_TIMEOUT_S = float(os.environ.get("DISTILLERY_DEPLOY_TEST_TIMEOUT", 900))
STAGE_TABLES = [
    "prepare-{d}", "base-all", "train-expert-{d}", "dsa-warmup-{d}", "generate-{d}", "verify-{d}", "mixture-all", "distill-all", "opd-all",
    "mixed-rl-all", "baseline-all", "evaluate-all", "report-all",
]
# One round of each stage after distill (off in configs/micro.yaml), so that every deployment's flow runs.
AFTER_DISTILL = ["opd.steps=1", "opd.prompts_per_step=2", "mixed_rl.steps=1", "mixed_rl.prompts_per_step=2", "mixed_rl.group_size=2"]


def test_pipeline_deployment_runs_on_a_process_worker(prefect_stack: Stack, tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
        LogFilter,
        LogFilterFlowRunId,
        LogFilterLevel,
    )
    from prefect.client.schemas.sorting import LogSort
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from flows.config import load_config

    run_root = tmp_path / "run"
    overrides = [f"run_root={run_root}", "domains=[code]", *AFTER_DISTILL]
    config = load_config(REPO / "configs" / "micro.yaml", overrides)
    stack = prefect_stack
    started = time.monotonic()
    try:
        with temporary_settings(updates={PREFECT_API_URL: stack.api_url, PREFECT_HOME: stack.env["PREFECT_HOME"]}):
            with get_client(sync_client=True) as client:
                deployments = {
                    f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()
                }
                assert sorted(deployments) == sorted(
                    [
                        "pipeline/pipeline", "index/index", "prepare/prepare", "base/base", "train_expert/train-expert", "dsa_warmup/dsa-warmup",
                        "generate/generate", "verify/verify", "mixture/mixture", "distill/distill", "opd/opd", "mixed_rl/mixed-rl", "baseline/baseline", "evaluate/evaluate",
                        "report/report",
                    ]
                )
                for d in deployments.values():
                    assert d.work_pool_name == "distillery"
                    # Resolved on the worker, not frozen to the deployer's path.
                    assert d.pull_steps[0] == {
                        "prefect.deployments.steps.set_working_directory": {"directory": "{{ $DISTILLERY_ROOT }}"}
                    }
                pipeline_schema = deployments["pipeline/pipeline"].parameter_openapi_schema
                assert {"config", "config_file", "overrides"} <= set(pipeline_schema["properties"])
                assert "PipelineConfig" in pipeline_schema["definitions"]  # the UI form knows every field

                # As a user fills the form: a config file and command-line style overrides.
                flow_run = run_deployment(
                    "pipeline/pipeline",
                    client=client,
                    parameters={"config_file": "configs/micro.yaml", "overrides": overrides},
                    timeout=0,
                )
                timed_out = False
                while not flow_run.state.is_final():
                    if time.monotonic() - started > RUN_TIMEOUT_S:
                        timed_out = True
                        break
                    if stack.processes["worker"].poll() is not None:
                        pytest.fail(f"the worker exited with {stack.processes['worker'].returncode}")
                    time.sleep(3)
                    flow_run = client.read_flow_run(flow_run.id)
                elapsed = time.monotonic() - started

                runs = {flow_run.id: flow_run, **flow_runs_below(client, flow_run.id)}  # the stage subflows too
                artifacts = client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=list(runs)), type=ArtifactFilterType(not_any_=["progress"])
                    ),
                    limit=200,
                )
                by_key = {a.key: a for a in artifacts if a.key}
                pull_logs = client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])), limit=200, sort=LogSort.TIMESTAMP_ASC
                )
                errors = client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(runs)), level=LogFilterLevel(ge_=40)),
                    limit=50,
                    sort=LogSort.TIMESTAMP_ASC,
                )

        flow_names = {d.flow_id: name.split("/")[0] for name, d in deployments.items()}
        subflows = sorted(f"{flow_names.get(r.flow_id, r.flow_id)}:{r.state.type.value}" for r in runs.values() if r.id != flow_run.id)
        print(
            f"\nflow run {flow_run.name} ({flow_run.id}): {flow_run.state.type.value} after {elapsed:.0f}s on "
            f"work pool {flow_run.work_pool_name!r}; {len(subflows)} subflow runs ({', '.join(subflows)}); "
            f"artifact keys: {sorted(by_key)}"
        )
        assert not timed_out, f"flow run still {flow_run.state.type.value} after {RUN_TIMEOUT_S:.0f}s (subflows: {', '.join(subflows)})"
        assert flow_run.work_pool_name == "distillery" and flow_run.deployment_id == deployments["pipeline/pipeline"].id
        messages = [log.message for log in pull_logs]
        assert any("set_working_directory" in m and "completed successfully" in m for m in messages), messages[:20]
        assert flow_run.state.is_completed(), (
            f"flow run {flow_run.state.type.value}: {flow_run.state.message}\n"
            + "\n".join(f"[{log.level}] {log.message[-2000:]}" for log in errors)
        )

        assert (run_root / "report.md").exists()
        # The stages after distill ran (one round each): the report compares each with the student it started from.
        after = (run_root / "report.md").read_text().split("After distillation")[1]
        assert "| on-policy distillation (OPD) | student | code |" in after and "| mixed RL | student + OPD | code |" in after
        assert "| mixed RL | student | code |" in after and "Forgetting check, mixed RL against the distilled student" in after
        report = by_key.get("pipeline-report")
        assert report is not None and report.type == "markdown", sorted(by_key)
        assert "Held-out accuracy" in report.data
        expected = sorted({key.format(d=d) for key in STAGE_TABLES for d in config.domains})
        missing = [key for key in expected if key not in by_key]
        assert not missing, f"missing stage artifacts {missing}; got {sorted(by_key)}"
        assert all(by_key[key].type == "table" for key in expected)
        assert all(r.state.is_completed() for r in runs.values())
        assert {r.flow_id for r in runs.values()} >= {deployments[n].flow_id for n in deployments if n != "pipeline/pipeline"}
    except BaseException:
        stack.dump_logs()
        raise


# Chromium refuses its sandbox as root (CI); nothing beyond loopback is reachable, so no background traffic.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run",
]
UI_TIMEOUT_MS = 60_000  # a page of the UI can take seconds to render on 2 busy cores
STAGE_RUN_TIMEOUT_S = 300  # prepare on configs/tiny.yaml takes about 15 s


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium (`make test` installs it), driven by Playwright: nothing is downloaded."""
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("DISTILLERY_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        pytest.fail("no Chromium: `make test` installs Debian's (apt-get install chromium), or set DISTILLERY_CHROMIUM")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _table(page) -> list[dict[str, str]]:
    """The rows of the page's table, keyed by column header."""
    header = [cell.inner_text().strip() for cell in page.locator("table thead th").all()]
    return [
        dict(zip(header, (cell.inner_text().strip() for cell in row.locator("td").all())))
        for row in page.locator("table tbody tr").all()
    ]


def test_a_stage_runs_from_the_ui_with_a_changed_parameter(prefect_stack: Stack, browser, tmp_path: Path):
    """As a user: the deployments page, `prepare`, a custom run with one override typed into the form,
    the run completes, and its artifacts show the stage's tables with the changed size."""
    from playwright.sync_api import expect
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from flows.config import load_config

    stack, shots = prefect_stack, tmp_path / "screenshots"
    domains = load_config(REPO / "configs" / "tiny.yaml").domains  # the deployment's default config
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(UI_TIMEOUT_MS)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    step = itertools.count(1)

    def shot(name: str) -> None:
        page.screenshot(path=shots / f"{next(step):02d}-{name}.png", full_page=True)

    try:
        page.goto(f"{stack.url}/deployments")
        deployments = len(yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"])
        expect(page.get_by_text(f"{deployments} Deployments")).to_be_visible()
        shot("deployments")
        # The list shows ten deployments a page: find the stage by name, as a user would.
        page.get_by_placeholder("Search deployments").fill("prepare")
        page.locator('a[href^="/deployments/deployment/"]', has_text=re.compile("^prepare$")).click()
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("Custom run").click()
        page.wait_for_url(re.compile(r"/run(\?|$)"))

        # The form knows every config field with its description (from PipelineConfig's schema)...
        page.get_by_role("button", name="PipelineConfig").click()
        expect(page.get_by_text("new prompts per domain for the experts to answer")).to_be_visible()
        shot("form-config-fields")
        page.get_by_role("button", name="None").first.click()  # ...but this run keeps the default file
        # One change: `overrides` as on the command line.
        page.get_by_role("button", name="list", exact=True).click()
        page.get_by_role("button", name="Add item").click()
        expect(page.locator("textarea")).to_have_count(1)
        page.locator("textarea").fill("prepare.prompt_tasks=5")
        run_name = page.locator("input[type=text]").first.input_value()
        shot("form-filled")
        page.get_by_role("button", name="Submit").click()
        page.wait_for_url(re.compile(r"/deployments/deployment/[^/]+(\?|$)"))

        with temporary_settings(updates={PREFECT_API_URL: stack.api_url, PREFECT_HOME: stack.env["PREFECT_HOME"]}):
            with get_client(sync_client=True) as client:
                deadline = time.monotonic() + STAGE_RUN_TIMEOUT_S
                while True:
                    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name])))
                    if runs and runs[0].state.is_final():
                        break
                    assert time.monotonic() < deadline, f"flow run {run_name!r} not final after {STAGE_RUN_TIMEOUT_S}s: {runs}"
                    time.sleep(2)
        run = runs[0]
        assert run.state.is_completed(), f"{run_name}: {run.state.type.value}: {run.state.message}"

        page.get_by_role("link", name=run_name).click()
        page.wait_for_url(re.compile(r"/runs/flow-run/"))
        expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
        page.locator("li.p-tab", has_text="Artifacts").click()
        for d in domains:
            expect(page.get_by_text(f"prepare-{d}", exact=True)).to_be_visible()
        shot("run-artifacts")
        page.get_by_text(f"prepare-{domains[0]}", exact=True).click()
        page.wait_for_url(re.compile(r"/artifacts/artifact/"))
        expect(page.locator("table tbody tr")).to_have_count(3)
        shot("stage-table")
        rows = {row["name"]: row for row in _table(page)}
        assert sorted(rows) == ["eval", "prompts", "seed"], rows
        assert rows["prompts"]["rows"] == "5", f"the form's prepare.prompt_tasks=5 did not reach the run: {rows['prompts']}"
        assert (stack.source / "runs" / "tiny" / rows["prompts"]["uri"]).exists()  # the worker ran in the source copy
    except BaseException:
        shot("failure")
        stack.dump_logs()
        raise
    finally:
        page.close()
        print(f"\nscreenshots: {shots}")
