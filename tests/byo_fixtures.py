"""Small stand-ins for a user's own checkpoints and datasets, written in the real formats.

Nothing can be downloaded here, so the tests make what a user would bring: a DeepseekV3 (dense MLA,
with MoE layers as in V3) and a Qwen2 (`save_pretrained`), a BPE tokenizer shaped like a chat
model's (a ChatML chat template, no BOS and no pad token), and GSM8K- and MBPP-shaped files.
`byo_fixtures` writes the set configs/byo.yaml reads:

    .venv/bin/python tests/byo_fixtures.py runs/byo-fixtures
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import datasets
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM, AutoTokenizer, DeepseekV3Config, DeepseekV3ForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM,
)

from domains import get_domain
from domains.base import split_calls
from domains.formats import format_tasks
from experts.pretrained import ready_tokenizer
from experts.sft import TrainConfig, train_sft

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_TEXT = [
    "What is 12 + 30? The answer is 42.",
    "def add(a, b):\n    return a + b",
    "Search the documents for the capital of France: Paris.",
    "Call the tool with the arguments, then read the result.",
] * 20


def chat_tokenizer(vocab_size: int = 384, texts: Sequence[str] = _TEXT) -> PreTrainedTokenizerFast:
    """A byte-level BPE with a ChatML template, `<|im_end|>` as EOS, and neither BOS nor pad (as Qwen2's base tokenizers)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", chat_template=CHATML)


def deepseek_v3(directory: Path, tokenizer: PreTrainedTokenizerFast | None = None, seed: int = 0, **overrides) -> Path:
    """A random DeepseekV3 checkpoint: one dense layer, then MoE layers (4 routed experts, 2 per token)."""
    tokenizer = tokenizer or chat_tokenizer()
    torch.manual_seed(seed)
    config = DeepseekV3Config(**{
        "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
        "num_hidden_layers": 2, "first_k_dense_replace": 1, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "n_group": 1, "topk_group": 1, "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 32,
        "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
        "max_position_embeddings": 512, "eos_token_id": tokenizer.eos_token_id, "tie_word_embeddings": False, **overrides,
    })
    DeepseekV3ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def qwen2(directory: Path, tokenizer: PreTrainedTokenizerFast | None = None, seed: int = 0) -> Path:
    """A random two-layer Qwen2 checkpoint: a student of another family. Its embedding table is
    padded to a multiple of 64 rows, as Qwen's are, and AutoTokenizer reads its tokenizer as a
    Qwen2Tokenizer, which adds <|endoftext|>: another vocabulary than the same file read elsewhere."""
    tokenizer = tokenizer or chat_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=(len(tokenizer) // 64 + 1) * 64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def gsm8k_rows(n: int, seed: int) -> list[dict]:
    """Our math tasks written as GSM8K publishes its rows: a question, a worked answer ending '#### N'."""
    rows = []
    for task in get_domain("math").make_tasks(n, seed):
        steps, _, answer = task["completion"].rpartition("Answer:")
        rows.append({"question": task["prompt"].removeprefix("Q: ").removesuffix("\nA:"), "answer": f"{steps.strip()}\n#### {answer.strip()}"})
    return rows


def mbpp_rows(n: int, seed: int) -> list[dict]:
    """Our code tasks written as MBPP publishes its rows: text, code, test_list."""
    rows = []
    for i, task in enumerate(get_domain("code").make_tasks(n, seed)):
        text = task["prompt"].removeprefix("Q: ").removesuffix("\nA:\n")
        rows.append({"task_id": 10_000 + i, "text": text, "code": task["completion"], "test_list": json.loads(task["meta"])["tests"]})
    return rows


_PEOPLE = ["Arlen", "Bexley", "Corwin", "Dalia", "Eamon", "Fenna", "Galen", "Hollis", "Isolde", "Jorah", "Kestrel", "Lysa"]
_PLACES = ["Ashford", "Brinmoor", "Caldera", "Dunmere", "Elmwick", "Fallowby", "Greystone", "Harrowgate", "Ivydale", "Juniper"]
_COUNTRIES = ["Norvania", "Ostrel", "Pellandor", "Quessia", "Rhovan"]
_JOBS = ["baker", "carpenter", "cartographer", "glassblower", "librarian", "potter", "tailor", "weaver"]


def search_corpus(people: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A corpus in the published shape (id, title, text: one page per person and per town) and
    QA-shaped questions about it (question, answer: a list of accepted answers, as NQ and TriviaQA
    give them). Names are surname-qualified so that `people` can be large (the index benchmark)."""
    r = random.Random(seed)
    towns = [f"{place} {i}" for i, place in enumerate(_PLACES * max(1, people // 40 + 1))][: max(10, people // 4)]
    country = {t: r.choice(_COUNTRIES) for t in towns}
    corpus = [{"id": f"town-{i}", "title": t, "text": f"{t} is a town in {country[t]}, on the river {r.choice(_PLACES)}."} for i, t in enumerate(towns)]
    questions = []
    for i in range(people):
        name = f"{r.choice(_PEOPLE)} {r.choice(_PLACES)}son{i}"
        home, birth, job = r.choice(towns), r.choice(towns), r.choice(_JOBS)
        corpus.append({"id": f"person-{i}", "title": name, "text": f"{name} is a {job} who lives in {home}. {name} was born in {birth}."})
        questions += [
            {"question": f"Where does {name} live?", "answer": [home]},
            {"question": f"What does {name} work as?", "answer": [job, f"a {job}"]},
        ]
    r.shuffle(corpus)
    return corpus, questions


def agent_tasks(n: int, seed: int) -> list[dict]:
    """Our agent tasks in the JSONL spec a user writes theirs in (domains/agents.py): instruction, env, initial_state, calls."""
    rows = []
    for task in get_domain("agents").make_tasks(n, seed):
        meta = json.loads(task["meta"])
        rows.append({"instruction": task["prompt"].removeprefix("Q: ").removesuffix("\nA:"), "env": meta["env"],
                     "initial_state": meta["initial_state"], "calls": [json.loads(c) for c in split_calls(task["completion"])]})
    return rows


def byo_fixtures(root: Path, pretrain_steps: int = 300, rows: int = 96) -> Path:
    """What configs/byo.yaml reads, under `root`: gsm8k.jsonl and mbpp/ (a save_to_disk directory) in
    their published shapes, deepseek-v3/ (a DeepseekV3 with a chat tokenizer, pretrained by
    `pretrain_steps` of SFT on those rows so that its experts have something to distil) and qwen2-student/.
    The rows are few (configs/byo.yaml's splits take 80 of each file) so that the stand-in learns
    their answers by heart in a minute: a base that knows the tasks, as a user's pretrained one does.

    Its MLPs are dense: transformers runs MoE experts one by one, which on 2 CPU cores made the
    pretraining alone take over 15 minutes; the conversion of MoE checkpoints is tested on its own
    (tests/test_convert.py)."""
    root.mkdir(parents=True, exist_ok=True)
    gsm8k, mbpp = gsm8k_rows(rows, seed=101), mbpp_rows(rows, seed=202)
    (root / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm8k))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(mbpp)}).save_to_disk(str(root / "mbpp"))
    tasks = format_tasks(gsm8k, get_domain("math"), "math", "gsm8k", "gsm8k.jsonl") + format_tasks(mbpp, get_domain("code"), "code", "mbpp", "mbpp")
    tokenizer = chat_tokenizer(512, texts=[t["prompt"] + t["completion"] for t in tasks])
    base = deepseek_v3(root / "deepseek-v3", tokenizer, hidden_size=128, num_hidden_layers=3, first_k_dense_replace=3, intermediate_size=384,
                       q_lora_rank=64, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32)
    model = AutoModelForCausalLM.from_pretrained(base)
    ready = ready_tokenizer(AutoTokenizer.from_pretrained(base), "fixture")
    bar = lambda step, total, loss: print(f"pretraining the stand-in base: {step}/{total} loss {loss:.3f}", flush=True) if step % 25 == 0 else None  # noqa: E731
    # The loss on the answers only: the prompts are long and predictable, and the stand-in has few steps to learn to answer.
    train_sft(model, ready, tasks, TrainConfig(steps=pretrain_steps, batch_size=32, lr=5e-3), seed=0, progress=bar)
    model.save_pretrained(base)
    qwen2(root / "qwen2-student", tokenizer)
    return root


if __name__ == "__main__":
    byo_fixtures(Path(sys.argv[1]))
