"""Teacher top-k storage, the student's examples and training loop, decontamination: on real tiny models and real Parquet."""

import json
import random

import numpy as np
import pyarrow as pa
import pytest
import torch

from data import tables
from data.lineage import LineageRecord
from distill.decontam import overlaps, word_ngrams
from data.shards import ShardDir
from distill.evaluate import Change, Score, Summary, Target, evaluate_models
from distill.mixture import decontaminate_table, mix_verified
from distill.report import acceptance_table, after_table, bar_chart, calls_table, curves_chart, forgetting, rl_table, score_table, to_markdown
from distill.train import DistillConfig, KDConfig, encode_row, train_student, weighted_epoch
from domains import get_domain
from experts.heldout import EvalConfig, accuracy_by_calls, accuracy_with_ci, paired_difference
from experts.model import ModelConfig, build_model
from experts.sft import collate, encode
from experts.tokenizer import train_tokenizer
from flows.config import ConfigError, load_config
from flows.plan import plan
from generation.logprobs import TeacherLogprobsConfig, generation_columns, teacher_topk
from generation.turns import IGNORE, model_token_positions
from generation.types import SamplingConfig
from kernels.attention import dense_attention

TINY = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, index_topk=8)


@pytest.fixture(scope="module")
def setup():
    """A tokenizer and tool-using agents tasks; every sequence is [BOS] prompt completion [EOS] with <result> spans."""
    tasks = get_domain("agents").make_tasks(12, seed=0) + get_domain("math").make_tasks(12, seed=0)
    tok = train_tokenizer([t["prompt"] + t["completion"] for t in tasks] * 4, 300)
    seqs = []
    for t in tasks:
        ids, _ = encode(tok, t["prompt"], t["completion"], False, 10_000)
        seqs.append((ids, 1 + len(tok(t["prompt"], add_special_tokens=False)["input_ids"])))
    return tok, tasks, seqs


def model(tok, seed):
    return build_model(TINY, tok, seed=seed).eval()


def test_model_token_positions_skip_prompt_and_tool_results(setup):
    tok, tasks, seqs = setup
    ids, prompt_len = seqs[0]
    assert "<result>" in tasks[0]["completion"]
    pos = model_token_positions(tok, ids, prompt_len)
    text = tok.decode([ids[i] for i in pos])
    assert "<result>" not in text and "</result>" not in text and "<call>" in text
    assert pos[0] == prompt_len and pos[-1] == len(ids) - 1  # the EOS the model produced is learned


def test_teacher_topk_is_the_forward_distribution_whatever_the_batch(setup):
    tok, _, seqs = setup
    # Sparse selection would make the result depend on padding: transformers' indexer breaks ties
    # among equal (ReLU-zero) scores differently for different key widths. Not what is tested here.
    teacher = build_model(TINY.model_copy(update={"index_topk": 512}), tok, seed=1).eval()
    k = 5
    batched = teacher_topk(teacher, tok, seqs, k, batch_size=7)
    for (ids, prompt_len), (top, lp) in zip(seqs[:4], batched[:4]):
        pos = torch.tensor(model_token_positions(tok, ids, prompt_len))
        with torch.no_grad():
            full = torch.log_softmax(teacher(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        want_lp, want_ids = full[pos - 1].topk(k, -1)
        assert top.shape == (len(pos), k)
        torch.testing.assert_close(lp, want_lp, atol=1e-4, rtol=1e-4)
        assert torch.equal(top, want_ids)


def test_generation_columns_roundtrip_parquet_in_narrow_types(setup, tmp_path):
    tok, tasks, seqs = setup
    columns, metrics = generation_columns(model(tok, 1), tok, seqs, TeacherLogprobsConfig(topk=6, batch_size=8))
    table = pa.table({"task_id": [t["task_id"] for t in tasks], **columns})
    record = LineageRecord(id="x", kind="dataset", stage="generate", domain="agents", name="generations", uri="g.parquet", parents=[], params={}, code_version={})
    tables.write_table(table, tmp_path / "g.parquet", record)
    back = tables.read_table(tmp_path / "g.parquet")
    assert back.schema.field("token_ids").type == pa.list_(pa.int16())
    assert back.schema.field("topk_ids").type == pa.list_(pa.list_(pa.int16(), 6))
    assert back.schema.field("topk_logprobs").type == pa.list_(pa.list_(pa.float16(), 6))
    row = back.to_pylist()[0]
    assert row["token_ids"] == seqs[0][0] and row["prompt_len"] == seqs[0][1]
    assert len(row["topk_ids"]) == len(model_token_positions(tok, *seqs[0]))
    assert metrics["logprob_tokens"] == sum(len(model_token_positions(tok, *s)) for s in seqs)
    # 6 ids (int16) + 6 log-probs (float16) = 24 raw bytes a token, before zstd.
    assert 0 < metrics["logprob_bytes_per_token"] < 30


def test_encode_row_uses_the_experts_exact_ids_and_cuts_topk_with_them(setup):
    tok, tasks, seqs = setup
    teacher = model(tok, 1)
    (top, lp), = teacher_topk(teacher, tok, seqs[:1], 4, 1)
    ids, prompt_len = seqs[0]
    # An id sequence that re-encoding the text would not give back: training must keep it as is.
    row = {"domain": "agents", "prompt": tasks[0]["prompt"], "completion": "", "token_ids": ids, "prompt_len": prompt_len,
           "topk_ids": top.tolist(), "topk_logprobs": lp.tolist()}
    ex = encode_row(tok, row, max_len=len(ids), with_topk=True)
    assert ex.ids == ids and ex.kd_pos == model_token_positions(tok, ids, prompt_len)
    assert [ex.labels[p] for p in ex.kd_pos] == [ids[p] for p in ex.kd_pos]
    assert all(label == -100 for i, label in enumerate(ex.labels) if i not in ex.kd_pos)
    cut = encode_row(tok, row, max_len=prompt_len + 3, with_topk=True)
    assert len(cut.ids) == prompt_len + 3 and cut.kd_pos == ex.kd_pos[:3] and cut.topk_ids.shape == (3, 4)
    np.testing.assert_array_equal(cut.topk_ids, top[:3].numpy())
    with pytest.raises(ValueError, match="top-k"):
        encode_row(tok, {**row, "topk_ids": None}, max_len=100, with_topk=True)


def test_weighted_epoch_repeats_and_drops_domains():
    domains = ["a"] * 10 + ["b"] * 4 + ["c"] * 3
    epoch = weighted_epoch(domains, {"b": 2.5, "c": 0}, random.Random(0))
    counts = {d: sum(domains[i] == d for i in epoch) for d in "abc"}
    assert counts == {"a": 10, "b": 10, "c": 0}
    assert sorted(i for i in epoch if domains[i] == "a") == list(range(10))


def test_kd_pulls_the_student_toward_the_teacher(setup):
    """Token-level KD alone (no cross-entropy) must shrink the divergence to the stored teacher top-k."""
    tok, tasks, seqs = setup
    teacher = model(tok, seed=1)
    topk = teacher_topk(teacher, tok, seqs, 8, 16)
    rows = [
        {"domain": t["domain"], "prompt": t["prompt"], "completion": t["completion"], "token_ids": ids, "prompt_len": n,
         "topk_ids": top.tolist(), "topk_logprobs": lp.tolist()}
        for t, (ids, n), (top, lp) in zip(tasks, seqs, topk)
    ]
    for loss in ("forward_kl", "reverse_kl", "jsd"):
        student = build_model(TINY, tok, seed=2)
        cfg = DistillConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=2, max_len=512, kd=KDConfig(loss=loss, ce_weight=0.0))
        curves = train_student(student, tok, rows, cfg, seed=0)
        assert set(curves) == {"loss", "ce", "kd", "tokens"} and len(curves["kd"]) == 40
        assert np.mean(curves["kd"][-5:]) < 0.5 * np.mean(curves["kd"][:5]), (loss, curves["kd"][:5], curves["kd"][-5:])


def test_sequence_only_training_is_plain_cross_entropy(setup):
    tok, tasks, _ = setup
    student = build_model(TINY, tok, seed=2)
    rows = [{"domain": t["domain"], "prompt": t["prompt"], "completion": t["completion"]} for t in tasks]
    # One batch holding every row: the first step's loss is the model's (dense) loss on all of them.
    batch = collate([encode(tok, r["prompt"], r["completion"], False, 256) for r in rows], tok.pad_token_id)
    with torch.no_grad(), dense_attention(student):
        expected = student(**batch).loss.item()
    curves = train_student(student, tok, rows, DistillConfig(steps=3, batch_size=len(rows), max_len=256), seed=0)
    assert set(curves) == {"loss", "ce", "tokens"} and curves["ce"][0] == pytest.approx(expected, rel=1e-4)
    assert curves["loss"] == curves["ce"]
    # Every step sees every row: its loss tokens are each row's completion and EOS, tool results left out.
    labels = [encode(tok, r["prompt"], r["completion"], False, 256)[1] for r in rows]
    completion_tokens = sum(label != IGNORE for row in labels for label in row)
    assert curves["tokens"] == [completion_tokens] * 3


def test_evaluate_goes_on_from_the_cells_it_finished(setup, tmp_path):
    """A killed evaluate stage keeps each (model, domain) it scored; run again, it scores only the rest
    and gives the rows and summary of a run never stopped."""
    tok, tasks, _ = setup
    evals = {d: [t for t in tasks if t["domain"] == d][:3] for d in ("math", "agents")}
    loads = []

    def target(name: str, seed: int, dense: bool = False) -> Target:
        def load():
            loads.append(name)
            return model(tok, seed), tok
        return Target(name, f"id-{name}", load, tuple(evals), dense)

    class Stop(Exception):
        pass

    def stop_at_baseline_on_agents(label: str):
        def bar(*_: float) -> None:
            if label == "baseline on agents":
                raise Stop
        return bar

    targets = [target("student", 1, dense=True), target("baseline", 2)]
    cfg = EvalConfig(sampling=SamplingConfig(temperature=0.0, max_new_tokens=8))
    whole = evaluate_models(targets, evals, cfg, seed=0)
    with pytest.raises(Stop):
        evaluate_models(targets, evals, cfg, seed=0, progress=stop_at_baseline_on_agents, cells=ShardDir(tmp_path / "cells"))
    assert [m["model"] + " on " + m["domain"] for m in ShardDir(tmp_path / "cells").metrics()] == ["student on math", "student on agents", "baseline on math"]
    loads.clear()
    assert evaluate_models(targets, evals, cfg, seed=0, cells=ShardDir(tmp_path / "cells")) == whole
    assert loads == ["baseline"]  # every cell of the student was saved: it is not even loaded


def test_mixture_keeps_narrow_types_and_decontamination_counts():
    def verified(domain, prompts):
        return pa.table({
            "task_id": [f"{domain}-{i}" for i in range(len(prompts))], "prompt": prompts, "completion": ["x"] * len(prompts),
            "token_ids": pa.array([[1, 2, 3]] * len(prompts), pa.list_(pa.int16())), "meta": ["{}"] * len(prompts),
        })
    evals = ["Q: Set c to 21 and z to 94.\nA:", "Q: One of Sam's shells costs 14 coins. How many coins do 5 shells cost?\nA:"]
    mixed = mix_verified({
        "agents": verified("agents", ["Q: Set c to 21 and z to 94.\nA:", "Q: Set c to 21 and z to 95.\nA:", "Q: Delete k.\nA:"]),
        "math": verified("math", ["Q: One of Sam's shells costs 14 coins. How many coins do 5 shells cost?\nA:",
                                  "Q: One of Dee's cards costs 14 coins. How many coins do 5 cards cost?\nA:"]),
    }, seed=0)
    assert mixed.column_names[0] == "domain" and "meta" not in mixed.column_names
    assert mixed.schema.field("token_ids").type == pa.list_(pa.int16())
    kept, metrics = decontaminate_table(mixed, evals, n=8, min_overlap=0.8)
    # The exact repeats go; a template sibling that differs in one number or name stays.
    assert sorted(kept.column("prompt").to_pylist()) == sorted([
        "Q: Set c to 21 and z to 95.\nA:", "Q: Delete k.\nA:", "Q: One of Dee's cards costs 14 coins. How many coins do 5 cards cost?\nA:"])
    assert metrics == {"decontam_overlapping_agents": 2, "decontam_removed_agents": 1,
                       "decontam_overlapping_math": 2, "decontam_removed_math": 1, "decontam_removed": 2}
    assert decontaminate_table(mixed, evals, n=0, min_overlap=0.8) == (mixed, {})


def test_ngram_overlap_formula():
    assert word_ngrams("Q: a b, c", 8) == {("q", "a", "b", "c")}
    assert word_ngrams("one two three", 2) == {("one", "two"), ("two", "three")}
    assert overlaps(["one two three four", "five six"], ["x one two three y"], 2) == [2 / 3, 0.0]


@pytest.mark.parametrize(
    "override, field",
    [
        ("distill.kd.loss=jsd", "teacher_logprobs.topk"),
        ("distill.kd.beta=1.0", "distill.kd.beta"),
        ("distill.kd.loss=kl", "distill.kd.loss"),
        ("distill.domain_weights.chess=2", "distill.domain_weights.chess"),
        ("distill.domain_weights.math=-1", "distill.domain_weights.math"),
        ("distill.decontam_overlap=0", "distill.decontam_overlap"),
        ("teacher_logprobs.topk=-1", "teacher_logprobs.topk"),
    ],
)
def test_bad_distill_settings_fail_at_load_naming_the_field(override, field):
    extra = ["teacher_logprobs.topk=0"] if field == "teacher_logprobs.topk" and "jsd" in override else []
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config("configs/smoke.yaml", [override, *extra])


# What reads the student: on-policy distillation and mixed RL (on in the default config), evaluate, report.
AFTER = {("opd", None, "model"), ("mixed_rl", None, "model"), ("evaluate", None, "scores"), ("report", None, "report")}


@pytest.mark.parametrize(
    "override, changed",
    [
        # KD and mixture weights touch the student only; the baseline keeps its id (it is not retrained).
        ("distill.kd.loss=jsd", {("distill", None, "model"), *AFTER}),
        ("distill.domain_weights.math=5", {("distill", None, "model"), ("baseline", None, "model"), *AFTER}),
        # The budget is shared with the baseline.
        ("distill.steps=7", {("distill", None, "model"), ("baseline", None, "model"), *AFTER}),
        ("distill.decontam_ngram=13", {("mixture", None, "mixture"), ("distill", None, "model"), ("baseline", None, "model"), *AFTER}),
    ],
)
def test_distill_settings_change_only_what_depends_on_them(override, changed):
    before, after = plan(load_config()), plan(load_config(None, [override]))
    assert {k for k in before if before[k].id != after[k].id} == changed


def test_teacher_topk_reruns_generation_not_the_baseline():
    before, after = plan(load_config()), plan(load_config(None, ["teacher_logprobs.topk=5"]))
    changed = {k for k in before if before[k].id != after[k].id}
    assert {s for s, _, _ in changed} == {"generate", "verify", "mixture", "distill", "opd", "mixed_rl", "evaluate", "report"}


def test_report_tables_and_figures(tmp_path):
    domains = ["math", "code"]
    scores = []
    for model, accs in {"base": (0.1, 0.2), "student": (0.2, 0.8), "baseline": (0.1, 0.5)}.items():
        scores += [Score(model, d, a, 0.05, 100) for d, a in zip(domains, accs)]
    scores += [Score("expert", "math", 0.2, 0.05, 100), Score("expert", "code", 0.9, 0.05, 100)]
    scores += [Score(m, d, s.accuracy, 0.05, 100, attention="dense") for s in scores for m, d in [(s.model, s.domain)] if m in ("expert", "student")]
    summary = Summary(scores, 0.2, 0.05)
    rows = acceptance_table(summary, domains)
    assert rows[0]["student / expert"] == "1.00 ok" and rows[1]["student / expert"] == "0.89 below 0.95"
    assert rows[-1]["student"] == "50.0" and rows[-1]["baseline"].startswith("30.0") and "beats it" in rows[-1]["baseline"]
    assert "does not beat it" in acceptance_table(Summary(scores, 0.2, 0.21), domains)[-1]["baseline"]
    # An expert is shown on its own domain only.
    assert score_table(summary, domains)[1] == {"model": "expert:math", "math": "20* ±5", "code": "–"}
    math_rl = {"heldout_sft": 0.5, "heldout_rl": 0.55, "heldout_rl_ci": 0.03, "heldout_sft_sampled": 0.3, "heldout_rl_sampled": 0.4,
               "heldout_rl_sampled_ci": 0.02, "rl_rewards": [0.1, 0.2, 0.3]}
    rl = rl_table({"math": math_rl, "code": {"final_loss": 0.1}})
    assert rl == [
        {"domain": "math", "SFT": "50.0", "SFT + GRPO": "55.0", "change": "+5.0 ±3.0", "sampled pass@1: SFT → SFT + GRPO": "30.0 → 40.0",
         "pass@1 change": "+10.0 ±2.0", "GRPO rounds": "3", "round reward, first → last": "0.100 → 0.300"}
    ]
    by_calls = [Score("expert", "code", 2 / 3, 0.0, 3, calls=2), Score("expert", "code", 1.0, 0.0, 1, calls=3), Score("expert", "math", 0.0, 0.0, 1, calls=2)]
    by_calls += [Score(m, "code", 0.0, 0.0, k, calls=n) for m in ("student", "baseline") for n, k in ((2, 3), (3, 1))]
    by_calls += [Score(m, "math", 1.0, 0.0, 1, calls=2) for m in ("student", "baseline")]
    calls = calls_table(Summary(scores + by_calls, 0.2, 0.05), domains)
    assert [(r["domain"], r["tool calls needed"], r["tasks"], r["expert"]) for r in calls] == [("math", "2", "1", "0"), ("code", "2", "3", "67"), ("code", "3", "1", "100")]
    assert "| code | 3 | 1 | 100 | 0 | 0 |" in to_markdown(calls)  # one header for every domain's rows
    assert Summary.from_metrics(summary.to_metrics()) == summary  # what the evaluate stage stores is what the report reads
    # After distillation: mixed RL worse than the distilled student on code beyond its interval is named.
    after = [Score("mixed_rl", d, a, 0.05, 100) for d, a in zip(domains, (0.3, 0.6))]
    changes = [Change("mixed_rl", "student", "math", 0.1, 0.04), Change("mixed_rl", "student", "code", -0.2, 0.05),
               Change("mixed_rl", "student", "average", -0.05, 0.03)]
    later = Summary(scores + after, 0.2, 0.05, changes)
    assert after_table(later)[1] == {"stage": "mixed RL", "against": "student", "domain": "code", "before": "80.0", "after": "60.0",
                                     "change (paired 95% CI)": "-20.0 ±5.0 worse"}
    assert after_table(later)[2]["before"] == "50.0" and after_table(later)[0]["change (paired 95% CI)"] == "+10.0 ±4.0 better"
    assert forgetting(later) == "Forgetting check, mixed RL against the distilled student: below it beyond the paired 95% CI on code.\n\n"
    assert score_table(later, domains)[-2] == {"model": "student + mixed RL", "math": "30 ±5", "code": "60 ±5"}
    assert Summary.from_metrics(later.to_metrics()) == later
    bar_chart(summary, domains, tmp_path / "scores.png")
    curves_chart({"student": ([0, 10, 20], [1.0, 0.5, 0.2]), "student (kd)": ([0, 10, 20], [0.3, 0.2, 0.1])}, tmp_path / "curves.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "scores.png"]  # no temporary files left
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in tmp_path.iterdir())


def test_paired_difference_uses_the_per_task_differences():
    rng = random.Random(3)
    a = {d: [rng.random() < p for _ in range(n)] for d, p, n in (("math", 0.6, 150), ("code", 0.9, 80))}
    # b agrees with a on most tasks: the paired interval must be far tighter than the independent one.
    b = {d: [x if rng.random() < 0.9 else not x for x in v] for d, v in a.items()}
    diff, ci = paired_difference(a, b)
    per_domain = []
    for d in a:
        x = np.array(a[d], float) - np.array(b[d], float)
        per_domain.append((x.mean(), x.var(ddof=1) / len(x)))
    assert diff == pytest.approx(np.mean([m for m, _ in per_domain]))
    assert ci == pytest.approx(1.96 * np.sqrt(sum(v for _, v in per_domain)) / len(a))
    independent = np.hypot(*(np.mean([accuracy_with_ci(m[d])[1] for d in m]) for m in (a, b)))
    assert ci < independent / 2
    with pytest.raises(ValueError, match="math"):
        paired_difference(a, {**b, "math": b["math"][:-1]})


def test_accuracy_by_calls_groups_by_the_reference_solution():
    tasks = get_domain("search").make_tasks(60, seed=1)
    oks = [i % 3 == 0 for i in range(len(tasks))]
    by = accuracy_by_calls(tasks, oks)
    assert set(by) == {1, 2, 3} and sum(count for _, count in by.values()) == len(tasks)
    for n, (acc, count) in by.items():
        mine = [ok for t, ok in zip(tasks, oks) if json.loads(t["meta"])["hops"] == n]
        assert (acc, count) == (sum(mine) / len(mine), len(mine))
    assert accuracy_by_calls(get_domain("math").make_tasks(5, seed=0), [True] * 5) == {}
