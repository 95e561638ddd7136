"""Thinking while using tools: reasoning before each call, kept within a task and dropped at a new
user turn, ignored by verifiers and the runtime, and carrying loss while tool results never do."""

import json

import pyarrow.parquet as pq
import pytest

from data.shards import ShardDir
from distill.train import encode_row
from domains import get_domain
from domains.agents import AgentsDomain
from domains.base import CALL_CLOSE, CALL_OPEN, RESULT_CLOSE, RESULT_OPEN, THINK_CLOSE, THINK_OPEN, SourceError, conversation, without_thoughts
from domains.formats import format_tasks
from experts.model import ModelConfig, build_model
from experts.rl import completion_batch
from experts.sft import TrainConfig, encode, train_sft
from experts.tokenizer import train_tokenizer
from generation.backends import generate
from generation.logprobs import TeacherLogprobsConfig
from generation.streaming import GenerateConfig, sample_domain
from generation.turns import IGNORE, Turns, marker_id
from generation.types import EngineConfig, Request, SamplingConfig
from tests.byo_fixtures import chat_tokenizer


def _task(domain: str, calls: int, seed: int = 0) -> dict:
    """The first task of `domain` whose reference makes exactly `calls` tool calls."""
    return next(t for t in get_domain(domain).make_tasks(200, seed) if t["completion"].count(CALL_OPEN) == calls)


def test_without_thoughts_removes_closed_spans_and_an_unclosed_tail():
    assert without_thoughts("a<think>b</think>c<think>d</think>e") == "ace"
    assert without_thoughts("a<think>b</think>c<think>never closed <call>x</call>") == "ac"
    assert without_thoughts("no thoughts </think> here") == "no thoughts </think> here"


@pytest.mark.parametrize("domain", ["agents", "search"])
def test_verifiers_judge_the_calls_and_answer_outside_the_thoughts(domain):
    """A thought may name a wrong call or a wrong answer: the verifier neither replays nor reads it."""
    dom = get_domain(domain)
    task = _task(domain, 2)
    reference = task["completion"]
    assert dom.verify(task, reference).ok
    wrong_call = '<call>{"tool": "delete", "args": {"key": "zz"}}</call>' if domain == "agents" else '<call>{"tool": "search", "args": {"query": 1}}</call>'
    noisy = reference.replace(THINK_CLOSE, f" maybe {wrong_call} Answer: Nowhere{THINK_CLOSE}", 1)
    assert noisy != reference and dom.verify(task, noisy).ok
    # Without reasoning the same calls verify too: thinking is the format, not the criterion.
    assert dom.verify(task, without_thoughts(reference)).ok
    # A call that only happens inside a thought was never made.
    only_thought = f"{THINK_OPEN}{without_thoughts(reference)}{THINK_CLOSE}"
    assert dom.verify(task, only_thought).reason == "no_tool_call"


def test_a_call_inside_a_thought_is_not_run_with_marker_tokens_or_text_markers():
    """The runtime acts on a call only outside a thought, for a tokenizer with the markers as tokens
    (ours) and one that spells them in ordinary tokens (a pretrained chat tokenizer)."""
    task = _task("agents", 2)
    reference = task["completion"]
    for tok in (train_tokenizer([task["prompt"] + reference] * 4, 300), chat_tokenizer(texts=[task["prompt"] + reference])):
        sampling = SamplingConfig(temperature=0.0, max_new_tokens=200, max_tool_turns=4)
        turns = Turns(tok, sampling)
        seq = turns.start(task["prompt"], get_domain("agents").environment(task))
        first_call = reference[reference.index(CALL_OPEN) : reference.index(CALL_CLOSE) + len(CALL_CLOSE)]
        thought = f" {THINK_OPEN}try {first_call} first"
        ended = [turns.push(seq, t) for t in tok(thought, add_special_tokens=False)["input_ids"]]
        assert not any(ended) and seq.tool_calls == 0 and turns.thinking(seq)
        after = f"{THINK_CLOSE}{first_call}"
        ended = [turns.push(seq, t) for t in tok(after, add_special_tokens=False)["input_ids"]]
        assert ended[-1] and seq.tool_calls == 1 and not turns.thinking(seq)
        text = turns.completion(seq).text
        assert text.count(RESULT_OPEN) == 1 and text.endswith(RESULT_CLOSE)


def test_a_new_user_turn_drops_the_reasoning_of_the_turns_before_it():
    first = _task("search", 2)
    prompt = conversation([(first["prompt"].removeprefix("Q: ").removesuffix("\nA:"), first["completion"])], "And then?")
    assert THINK_OPEN not in prompt and without_thoughts(first["completion"]) in prompt
    assert prompt.endswith("\nQ: And then?\nA:")
    # The search domain asks follow-up questions: their prompts hold the first exchange, its calls and
    # results, without its thoughts; the new answer reasons again before each of its own calls.
    follow_ups = [t for t in get_domain("search").make_tasks(200, 0) if t["prompt"].count("Q: ") == 2]
    assert 10 <= len(follow_ups) <= 35
    for t in follow_ups:
        assert THINK_OPEN not in t["prompt"] and RESULT_OPEN in t["prompt"] and "Answer:" in t["prompt"]
        assert t["completion"].count(THINK_OPEN) == t["completion"].count(CALL_OPEN) >= 1
        assert get_domain("search").verify(t, t["completion"]).ok


def test_a_users_agent_tasks_bring_their_own_reasoning():
    record = {"instruction": "Copy a into b.", "env": "kv", "initial_state": {"a": 4},
              "calls": [{"tool": "get", "args": {"key": "a"}}, {"tool": "set", "args": {"key": "b", "value": 4}}]}
    default = format_tasks([record], AgentsDomain(), "agents", "agents", "tasks.jsonl")[0]
    assert default["completion"].startswith(f" {THINK_OPEN}read a{THINK_CLOSE}{CALL_OPEN}")
    own = format_tasks([{**record, "reasoning": ["a holds the value", "b < 5 is fine"]}], AgentsDomain(), "agents", "agents", "tasks.jsonl")[0]
    assert f"{THINK_OPEN}a holds the value{THINK_CLOSE}{CALL_OPEN}" in own["completion"] and "b < 5 is fine" in own["completion"]
    assert get_domain("agents").verify(own, own["completion"]).ok
    with pytest.raises(SourceError, match=r"tasks.jsonl row 0: reasoning: expected a list of 2 strings"):
        format_tasks([{**record, "reasoning": ["one"]}], AgentsDomain(), "agents", "agents", "tasks.jsonl")
    with pytest.raises(SourceError, match=r"a marker .* inside reasoning"):
        format_tasks([{**record, "reasoning": ["ok", "</think><call>"]}], AgentsDomain(), "agents", "agents", "tasks.jsonl")


def test_a_trace_with_reasoning_and_two_calls_round_trips_to_the_loss_mask(tmp_path):
    """generate -> verify -> Parquet -> training, on token ids: a model that learnt one trace by heart
    writes it with the engine (the environment answering both calls), the verifier accepts it, its
    shard row holds the engine's exact ids, and every training path labels the thoughts and calls and
    masks the prompt and both tool results."""
    dom = get_domain("agents")
    task = _task("agents", 2)
    tok = train_tokenizer([task["prompt"] + task["completion"]] * 4, 300)
    # Top-k covers the whole sequence: the indexer is not trained here, and the point is the trace, not sparsity.
    model = build_model(ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, index_topk=256, max_position_embeddings=256), tok, seed=0)
    train_sft(model, tok, [task], TrainConfig(steps=200, batch_size=1, lr=3e-3, warmup_steps=0), seed=0)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=120, max_tool_turns=4)

    (c,) = generate(model, tok, [Request(task["prompt"], dom.environment(task))], sampling, EngineConfig(), seed=0)
    assert c.text.strip() == task["completion"].strip() and c.tool_calls == 2 and c.finish_reason == "eos"
    assert dom.verify(task, c.text).ok

    work = ShardDir(tmp_path / "shards")
    cfg = GenerateConfig(samples_per_prompt=1, sampling=sampling)
    sample_domain(model, tok, dom, [task], 1, cfg, TeacherLogprobsConfig(topk=4), work, seed=0)
    (row,) = pq.read_table(work.paths()).to_pylist()
    assert row["token_ids"] == c.ids and row["prompt_len"] == c.prompt_len and row["completion"] == c.text

    # The expected mask, from marker ids alone: the prompt and each <result>...</result> span carry no loss.
    ids, n = c.ids, c.prompt_len
    result_open, result_close, think_open = (marker_id(tok, m) for m in (RESULT_OPEN, RESULT_CLOSE, THINK_OPEN))
    opens = [i for i, t in enumerate(ids) if t == result_open]
    closes = [i for i, t in enumerate(ids) if t == result_close]
    assert len(opens) == len(closes) == 2
    in_result = {i for a, b in zip(opens, closes) for i in range(a, b + 1)}
    expected = [IGNORE if i < n or i in in_result else t for i, t in enumerate(ids)]
    assert sum(t == think_open for t in ids[n:]) == 2

    example = encode_row(tok, row, max_len=512, with_topk=True)
    assert example.ids == ids and example.labels == expected
    assert example.kd_pos == [i for i, label in enumerate(expected) if label != IGNORE]  # one teacher top-k per model token
    thought_positions = [i for i, t in enumerate(ids) if t == think_open]
    assert all(example.labels[i] == ids[i] for i in thought_positions)
    # Re-encoding the stored text (seed rows, another vocabulary) gives the same ids and labels, EOS included.
    sft_ids, sft_labels = encode(tok, task["prompt"], row["completion"], loss_on_prompt=False, max_len=512)
    assert sft_ids == ids and sft_labels == expected
    # GRPO's and OPD's mask of sampled tokens is the same set, shifted by one for next-token prediction.
    _, _, sampled = completion_batch(tok, [c])
    assert [i + 1 for i, s in enumerate(sampled[0].tolist()) if s] == example.kd_pos
    assert json.loads(task["meta"])["expected_state"]
