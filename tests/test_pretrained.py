"""A user's pretrained checkpoint as the base (experts/pretrained.py, data.checkpoints.save_reference)
and the chat template around prompts (generation.turns.prompt_ids)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from byo_fixtures import chat_tokenizer, deepseek_v3, qwen2
from transformers import AutoModelForCausalLM, AutoTokenizer

from data.checkpoints import load_checkpoint, save_reference
from data.integrity import damage
from data.lineage import LineageRecord
from distill.train import DistillConfig, KDConfig, encode_row, train_and_warm_up, train_student
from experts.model import ModelConfig, StudentSource
from experts.pretrained import adopt, load_pretrained, ready_tokenizer, same_vocabulary, source_identity
from experts.sft import encode
from experts.tokenizer import train_tokenizer
from experts.warmup import WarmupConfig
from flows.cli import main
from flows.config import ConfigError, load_config
from generation.turns import IGNORE, prompt_ids

REPO = Path(__file__).resolve().parent.parent


def _record() -> LineageRecord:
    return LineageRecord(id="ba5e000000000001", kind="checkpoint", stage="base", domain=None, name="model",
                         uri="checkpoints/base/all/model-ba5e000000000001", parents=[], params={}, code_version={})


def _files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def test_adopted_checkpoint_links_its_weights_and_loads_as_the_source(tmp_path):
    source = deepseek_v3(tmp_path / "v3")
    untouched = _files(source)
    directory, tokenizer, provenance = adopt(ModelConfig(pretrained=str(source)))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>" and tokenizer.padding_side == "left"
    artifact = tmp_path / "run" / "base-model"
    record = save_reference(artifact, _record(), directory, provenance, tokenizer)

    weights = artifact / "model.safetensors"
    assert weights.is_symlink() and weights.resolve() == (source / "model.safetensors").resolve()
    assert record.bytes == sum(f.stat().st_size for f in artifact.iterdir() if f.name != "lineage.json")
    assert provenance["weights_sha256"] == {"model.safetensors": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert provenance["architecture"] == "deepseek_v3" and provenance["pretrained"] == str(source)
    assert _files(source) == untouched  # the tokenizer was saved beside the links, not through them

    model, loaded_tokenizer = load_checkpoint(artifact)
    stock = AutoModelForCausalLM.from_pretrained(artifact)  # the ordinary call loads the artifact too
    original = AutoModelForCausalLM.from_pretrained(source)
    ids = torch.randint(0, original.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits) and torch.equal(stock(ids).logits, original(ids).logits)
    assert loaded_tokenizer.pad_token == "<|im_end|>"
    assert AutoTokenizer.from_pretrained(source).pad_token is None

    assert damage(record, artifact) is None
    with open(source / "model.safetensors", "ab") as f:  # the user's checkpoint changes under the run
        f.write(b"\0" * 8)
    assert "bytes" in damage(record, artifact)


def test_identity_follows_the_checkpoint_files(tmp_path):
    source = deepseek_v3(tmp_path / "v3")
    cfg = ModelConfig(pretrained=str(source))
    before = source_identity(cfg)
    assert before == source_identity(cfg)
    assert source_identity(ModelConfig()) is None
    assert source_identity(cfg.model_copy(update={"dtype": "bfloat16"})) != before
    weights = source / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert source_identity(cfg) != before


def test_a_checkpoint_without_weights_or_eos_is_refused(tmp_path):
    source = deepseek_v3(tmp_path / "v3")
    (source / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model.pretrained .* holds no weight files"):
        adopt(ModelConfig(pretrained=str(source)))
    no_eos = chat_tokenizer()
    no_eos.eos_token = None
    with pytest.raises(ValueError, match="has no EOS token"):
        ready_tokenizer(no_eos, "model.pretrained 'x'")


def test_prompts_go_through_the_chat_template_when_there_is_one():
    chat = ready_tokenizer(chat_tokenizer(), "fixture")
    ids = prompt_ids(chat, "What is 2 + 2?")
    assert chat.decode(ids) == "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    tokens, labels = encode(chat, "What is 2 + 2?", "4", loss_on_prompt=False, max_len=256)
    assert tokens[: len(ids)] == ids and labels[: len(ids)] == [IGNORE] * len(ids)
    assert chat.decode(tokens[len(ids):]) == "4<|im_end|>" and labels[len(ids):] == tokens[len(ids):]

    plain = train_tokenizer(["What is 2 + 2? 4"] * 10, 300)  # the tiny default: no template, a BOS
    ids = prompt_ids(plain, "What is 2 + 2?")
    assert ids[0] == plain.bos_token_id and plain.decode(ids[1:]) == "What is 2 + 2?"
    tokens, labels = encode(plain, "What is 2 + 2?", "4", loss_on_prompt=True, max_len=256)
    assert labels[0] == IGNORE and labels[1 : len(ids)] == ids[1:]


def _student_config(tmp_path, base: str | None, student: str, loss: str = "forward_kl") -> list[str]:
    overrides = [f"run_root={tmp_path / 'run'}", f"distill.student.pretrained={student}", f"distill.kd.loss={loss}"]
    return overrides + ([f"model.pretrained={base}"] if base else [])


def test_logit_kd_across_vocabularies_is_refused_at_load(tmp_path, capsys):
    base = deepseek_v3(tmp_path / "v3", chat_tokenizer(384))
    same = deepseek_v3(tmp_path / "v3-small", chat_tokenizer(384), num_hidden_layers=1)  # a smaller student, one vocabulary
    other = qwen2(tmp_path / "qwen-other", chat_tokenizer(320))
    config = "configs/micro.yaml"
    assert load_config(config, _student_config(tmp_path, base, same)).distill.student.pretrained == str(same)
    assert load_config(config, _student_config(tmp_path, base, other, loss="none")).distill.kd.loss == "none"
    with pytest.raises(ConfigError, match=r"the teachers' is .*v3' \(\w+, \d+ tokens\), the student's .*qwen-other' \(\w+, \d+ tokens\): set distill.kd.loss: none"):
        load_config(config, _student_config(tmp_path, base, other))
    with pytest.raises(ConfigError, match=r"trained by this run \(model.pretrained is unset\)"):
        load_config(config, _student_config(tmp_path, None, same))
    # On-policy distillation grades the student's tokens with the experts' distributions: the same rule.
    sequence_kd = _student_config(tmp_path, base, other, loss="none")
    with pytest.raises(ConfigError, match=r"opd.steps: 2 \(on-policy distillation\) needs one vocabulary .* set opd.steps: 0"):
        load_config(config, [*sequence_kd, "opd.steps=2"])
    assert load_config(config, [*_student_config(tmp_path, base, same), "opd.steps=2"]).opd.steps == 2
    # From the command line: one line, and the run root never made.
    capsys.readouterr()  # the fixtures' save bars
    assert main(["run", "--config", config, *(a for o in _student_config(tmp_path, base, other) for a in ("--set", o))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "distill.kd.loss: forward_kl needs one vocabulary" in err
    assert not (tmp_path / "run").exists()


def test_a_student_of_another_vocabulary_learns_from_the_text(tmp_path):
    teacher_tok = ready_tokenizer(chat_tokenizer(384), "teacher")
    student_source = StudentSource(pretrained=str(qwen2(tmp_path / "qwen", chat_tokenizer(320))))
    student, tokenizer = load_pretrained(student_source, "distill.student.pretrained")
    assert not same_vocabulary(tokenizer, teacher_tok)
    prompt, completion = "What is 2 + 2?", "The answer is 4."
    ids = prompt_ids(teacher_tok, prompt) + teacher_tok(completion, add_special_tokens=False)["input_ids"] + [teacher_tok.eos_token_id]
    row = {"domain": "math", "task_id": "t", "prompt": prompt, "completion": completion, "token_ids": ids, "prompt_len": len(prompt_ids(teacher_tok, prompt))}

    example = encode_row(tokenizer, row, 64, with_topk=False, teacher_ids=False)
    assert (example.ids, example.labels) == tuple(encode(tokenizer, prompt, completion, False, 64))
    assert encode_row(teacher_tok, row, 64, with_topk=False).ids == ids  # same vocabulary: the experts' own tokens

    cfg = DistillConfig(steps=2, batch_size=2, warmup_steps=0)
    with pytest.raises(ValueError, match="vocabulary is not the teachers'"):
        train_student(student, tokenizer, [row] * 4, cfg.model_copy(update={"kd": KDConfig(loss="forward_kl")}), seed=0, teacher_ids=False)
    curves, warm = train_and_warm_up(student, tokenizer, [row] * 4, cfg, WarmupConfig(steps=1), seed=0, teacher_ids=False)
    assert len(curves["loss"]) == 2 and warm == {"attention": "dense"}


def test_a_hub_id_is_adopted_from_the_hub_cache(tmp_path):
    """The hub path through `snapshot_download`, offline: a cache laid out as a download leaves it
    (refs/main naming the commit whose snapshot holds the files). The identity and the lineage name
the commit, so a branch that moves makes a new base instead of silently reusing the old one."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-qwen2"
    snapshot = qwen2(repo / "snapshots" / commit, chat_tokenizer())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = (
        "import json; from experts.model import ModelConfig; from experts.pretrained import adopt, source_identity\n"
        "cfg = ModelConfig(pretrained='acme/tiny-qwen2')\n"
        "directory, _, provenance = adopt(cfg)\n"
        "print(json.dumps({'directory': str(directory), 'revision': provenance['revision'], 'identity': source_identity(cfg)}))"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["directory"] == str(snapshot) and out["revision"] == commit
    assert out["identity"]["pretrained"] == "acme/tiny-qwen2" and out["identity"]["revision"] == commit  # main, pinned
    # main moves to a new commit (a later download): a new identity, and the new snapshot is adopted.
    moved = "fedcba9876543210fedcba9876543210fedcba98"
    qwen2(repo / "snapshots" / moved, chat_tokenizer(), seed=1)
    (repo / "refs" / "main").write_text(moved)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["directory"] == str(repo / "snapshots" / moved) and out["revision"] == out["identity"]["revision"] == moved
    missing = subprocess.run([sys.executable, "-c", script.replace("acme/tiny-qwen2", "acme/absent")], env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "model.pretrained 'acme/absent' cannot be loaded" in missing.stderr
