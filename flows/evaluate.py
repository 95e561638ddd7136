from __future__ import annotations

from prefect import flow

from data.shards import ShardDir
from distill.evaluate import Target, evaluate_models
from flows.artifacts import StageRun, run_stage
from flows.config import PipelineConfig, resolve
from flows.stages import AFTER_DISTILL


@flow(name="evaluate", log_prints=True)
def evaluate(config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """Score the base, every expert, the student (and after OPD, after mixed RL) and the no-expert baseline on every domain's held-out set.

    Each (model, domain) scored is kept in the stage's work directory: a killed stage goes on from there."""
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list:
        evals = {d: run.rows(role) for d, role in run.each("eval").items()}
        everywhere = tuple(evals)

        def target(name: str, role: str, domains: tuple[str, ...], dense: bool = False) -> Target:
            return Target(name, run.inputs[role].id, lambda: run.model(role), domains, dense)

        # Experts after their indexer warm-up, each on its own domain.
        experts = [target("expert", role, (d,), dense=True) for d, role in run.each("expert").items()]
        targets = [target("base", "base", everywhere), *experts, target("student", "student", everywhere, dense=True), target("baseline", "baseline", everywhere)]
        # The stages after distill, each against the student it started from; mixed RL also against the
        # distilled student itself when OPD came between (the forgetting check).
        after = [s for s, _ in AFTER_DISTILL if s in run.inputs]
        targets += [target(s, s, everywhere) for s in after]
        changes = [(s, before) for s, before in zip(after, ["student", *after])]
        if len(after) == 2:
            changes.append(("mixed_rl", "student"))
        rows, summary = evaluate_models(targets, evals, config.evaluate, seed=run.seed, progress=run.progress, changes=changes,
                                        cells=ShardDir(run.work))
        return [run.save_rows("scores", rows, **summary.to_metrics())]

    return run_stage(config, "evaluate", None, compute)[0].id
