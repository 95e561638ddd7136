"""configs/real.yaml, the one-GPU recipe, validates: every setting but the paths, which point at a user's files."""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from byo_fixtures import agent_tasks, chat_tokenizer, gsm8k_rows, mbpp_rows, qwen2, search_corpus

from flows.config import load_config
from flows.plan import plan


def test_real_config_validates_with_local_stand_ins(tmp_path):
    gsm8k = tmp_path / "gsm8k.jsonl"
    gsm8k.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows(20, seed=0)))
    mbpp = tmp_path / "mbpp"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(mbpp_rows(20, seed=0))}).save_to_disk(str(mbpp))
    corpus, questions = search_corpus(20, seed=0)
    pq.write_table(pa.Table.from_pylist(corpus), tmp_path / "corpus.parquet")
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (tmp_path / "agents.jsonl").write_text("".join(json.dumps(t) + "\n" for t in agent_tasks(20, seed=0)))
    tokenizer = chat_tokenizer()
    base, student = qwen2(tmp_path / "base", tokenizer), qwen2(tmp_path / "student", tokenizer, seed=1)
    sources = {
        "math": f"{{path: {gsm8k}, format: gsm8k}}",
        "code": f"{{path: {mbpp}, format: mbpp, split: test}}",
        "search": f"{{path: {tmp_path / 'questions.jsonl'}, format: qa, corpus: {tmp_path / 'corpus.parquet'}, top_k: 3}}",
        "agents": f"{{path: {tmp_path / 'agents.jsonl'}, format: agents}}",
    }
    config = load_config("configs/real.yaml", [
        f"run_root={tmp_path / 'run'}", f"model.pretrained={base}", f"distill.student.pretrained={student}",
        *(f"prepare.sources.{d}={s}" for d, s in sources.items()),
    ])
    assert config.expert.lora is not None and config.expert.precision == "bf16" and config.generate.engine.backend == "vllm"
    assert config.distill.kd.loss == "forward_kl"  # one tokenizer: token-level KD is allowed, and OPD
    assert config.opd.precision == "bf16" and config.opd.gradient_checkpointing and config.rl.gradient_checkpointing
    stages = {(s, d) for s, d, _ in plan(config)}
    assert ("opd", None) in stages
    assert ("index", "search") in stages and ("index", "math") not in stages
