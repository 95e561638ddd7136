"""Config loading: YAML + --set overrides, with errors that name the bad field."""

import pytest

from flows.config import ConfigError, load_config, parse_overrides
from flows.plan import outputs, plan


def test_default_config_loads_and_overrides_apply():
    cfg = load_config(None, ["distill.steps=7", "generate.sampling.temperature=0.5", "domains=[math, code]"])
    assert cfg.distill.steps == 7 and cfg.generate.sampling.temperature == 0.5 and cfg.domains == ["math", "code"]


def test_per_domain_overrides_merge_into_nested_settings():
    cfg = load_config(None, ["per_domain.agents.generate.sampling.max_new_tokens=128"])
    agents, math = cfg.generate_config("agents"), cfg.generate_config("math")
    assert agents.sampling.max_new_tokens == 128 and math.sampling.max_new_tokens == cfg.generate.sampling.max_new_tokens
    # The rest of the nested block stays as the shared setting says.
    assert agents.sampling.temperature == cfg.generate.sampling.temperature and agents.samples_per_prompt == cfg.generate.samples_per_prompt


def test_the_seed_reaches_every_stage():
    cfg = load_config()
    seeds = {(s, d): cfg.seed_for(s, d) for s in ("prepare", "train_expert", "generate") for d in ("math", "code")}
    assert len(set(seeds.values())) == len(seeds)  # no two stages or domains draw the same numbers
    other = load_config(None, ["seed=1"])
    assert all(other.seed_for(s, d) != v for (s, d), v in seeds.items())
    # And every artifact's identity.
    before, after = plan(cfg), plan(other)
    assert all(before[k].id != after[k].id for k in before)


def test_parse_overrides_nests_and_types():
    assert parse_overrides(["a.b.c=3", "a.b.d=x", "e=[1, 2]"]) == {"a": {"b": {"c": 3, "d": "x"}}, "e": [1, 2]}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["distill.steps"])


@pytest.mark.parametrize(
    "override, field",
    [
        ("distill.stepz=3", "distill.stepz"),
        ("distill.steps=many", "distill.steps"),
        ("distill.steps=0", "distill.steps"),
        ("generate.sampling.top_p=2", "generate.sampling.top_p"),
        ("generate.sampling.temprature=1", "generate.sampling.temprature"),
        ("per_domain.code.rl.sampling.max_new_tokens=0", "per_domain.code.rl.sampling.max_new_tokens"),
        ("evaluate.engine.backend=vllm", "evaluate.engine.backend"),
        ("execution.retries=-1", "execution.retries"),
        ("execution.runner=dask", "execution.runner"),
        ("execution.address=127.0.0.1:6379", "execution.address"),  # an address with the threads runner
        ("execution.resources={gpu: {num_gpus: 1}}", "execution.resources.gpu"),
        ("domains=[math, poetry]", "poetry"),
        ("per_domain.math.expert.lr=fast", "per_domain.math.expert.lr"),
        ("per_domain.chess.expert.lr=0.1", "chess"),
        ("per_domain.math.prepare.prompt_tasks=0", "per_domain.math.prepare.prompt_tasks"),
        ("nonsense=1", "nonsense"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert field in str(err.value)


def test_ray_resources_are_checked_and_in_no_identity():
    ray = ["execution.runner=ray", "execution.address=127.0.0.1:6379", "execution.resources={branch: {num_gpus: 1, num_cpus: 4}}"]
    with pytest.raises(ConfigError, match="execution.resources.branch.num_gpus"):
        load_config(None, [*ray[:2], "execution.resources={branch: {num_gpus: -1}}"])
    assert {k: v.id for k, v in plan(load_config()).items()} == {k: v.id for k, v in plan(load_config(None, ray)).items()}


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_one_domain_override_changes_only_its_branch():
    before = {k: v.id for k, v in plan(load_config()).items()}
    after = {k: v.id for k, v in plan(load_config(None, ["per_domain.math.expert.steps=5"])).items()}
    changed = {k for k in before if before[k] != after[k]}
    assert ("train_expert", "math", "model") in changed
    assert all(stage not in {"prepare", "base"} for stage, _, _ in changed)
    assert not {k for k in changed if k[1] in {"code", "agents", "search"}}
    assert ("distill", None, "model") in changed and ("evaluate", None, "scores") in changed


def test_per_domain_prepare_sizes():
    config = load_config(None, ["per_domain.math.prepare.prompt_tasks=7"])
    assert config.prepare_config("math").prompt_tasks == 7 and config.prepare_config("code").prompt_tasks == config.prepare.prompt_tasks
    before, after = plan(load_config()), plan(config)
    assert before[("prepare", "math", "prompts")].id != after[("prepare", "math", "prompts")].id
    assert before[("prepare", "code", "prompts")].id == after[("prepare", "code", "prompts")].id


def test_unknown_stage_or_domain_in_plan():
    p = plan(load_config())
    with pytest.raises(ValueError, match="'sing'"):
        outputs(p, "sing")
    with pytest.raises(ValueError, match="'poetry'"):
        outputs(p, "train_expert", "poetry")


def test_user_data_source_replaces_the_generator(tmp_path):
    import json

    from domains import get_domain
    from domains.prepare import prepare_domain

    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(json.dumps({"q": f"What is {i} plus {i}?", "a": f" {i}+{i}={2 * i}. Answer: {2 * i}", "v": 2 * i}) for i in range(60)))
    columns = {"prompt": "Q: {q}\\nA:", "completion": "a", "meta": {"answer": "v"}}
    cfg = load_config(None, [f"prepare.sources.math.path={data}", f"prepare.sources.math.columns={json.dumps(columns)}", "prepare.seed_tasks=20", "prepare.prompt_tasks=10", "prepare.eval_tasks=10"])
    splits = prepare_domain("math", cfg.prepare, cfg.seed)
    prompts = [t["prompt"] for rows in splits.values() for t in rows]
    assert len(prompts) == len(set(prompts)) == 40 and all(p.startswith("Q: What is") for p in prompts)
    math = get_domain("math")
    assert all(math.verify(t, t["completion"]).ok for rows in splits.values() for t in rows)
    # A file is a fixed pool, cut into disjoint splits: one holding exactly what is asked gives all its rows.
    whole = load_config(None, [f"prepare.sources.math.path={data}", f"prepare.sources.math.columns={json.dumps(columns)}", "prepare.seed_tasks=30",
                               "prepare.prompt_tasks=20", "prepare.eval_tasks=10"])
    assert len({t["prompt"] for rows in prepare_domain("math", whole.prepare, whole.seed).values() for t in rows}) == 60
    with pytest.raises(ValueError, match=rf"{data} holds 60 distinct math tasks, fewer than the 30 seed \+ 20 prompts \+ 11 eval"):
        prepare_domain("math", whole.prepare.model_copy(update={"eval_tasks": 11}), whole.seed)
    before = plan(cfg)[("prepare", "math", "seed")].id
    data.write_text(data.read_text().replace("plus", "added to"))
    assert plan(cfg)[("prepare", "math", "seed")].id != before  # new data, new identity
    with pytest.raises(ConfigError, match="prepare.sources.math.path"):
        load_config(None, [f"prepare.sources.math.path={tmp_path / 'nope.jsonl'}", "prepare.sources.math.columns={}"])
