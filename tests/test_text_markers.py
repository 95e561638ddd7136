"""Tool calls with a tokenizer that has no tokens for our markers (a pretrained model's): the turn
ends at `</call>` found in the text, and the environment's `<result>` spans are masked by text."""

from __future__ import annotations

import json

import pytest
from byo_fixtures import chat_tokenizer

from domains import get_domain
from domains.base import CALL_CLOSE, RESULT_CLOSE, RESULT_OPEN
from experts.tokenizer import train_tokenizer
from generation.turns import IGNORE, Turns, marker_id, mask_tool_results, mask_tool_results_by_text
from generation.types import SamplingConfig


@pytest.fixture(scope="module")
def tasks():
    return get_domain("agents").make_tasks(20, seed=5) + get_domain("search").make_tasks(20, seed=5)


def _runs(ids: list[int], labels: list[int], masked: bool) -> list[list[int]]:
    """Maximal runs of consecutive tokens that are (or are not) masked."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if (label == IGNORE) == masked:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_results_are_masked_by_text_when_the_markers_are_not_tokens(tasks):
    tok = chat_tokenizer(texts=[t["prompt"] + t["completion"] for t in tasks])
    assert marker_id(tok, RESULT_OPEN) is None and marker_id(tok, CALL_CLOSE) is None  # several tokens each
    for task in tasks:
        ids = tok(task["prompt"] + task["completion"], add_special_tokens=False)["input_ids"]
        labels = mask_tool_results(tok, ids, list(ids))
        results = [s.split(RESULT_CLOSE)[0] for s in (task["prompt"] + task["completion"]).split(RESULT_OPEN)[1:]]
        masked = [tok.decode(run) for run in _runs(ids, labels, masked=True)]
        kept = [tok.decode(run) for run in _runs(ids, labels, masked=False)]
        assert len(masked) == len(results)
        for text, result in zip(masked, results):
            assert f"{RESULT_OPEN}{result}{RESULT_CLOSE}" in text  # the whole span, markers included
            assert len(text) <= len(result) + len(RESULT_OPEN) + len(RESULT_CLOSE) + 4  # and at most a boundary character or two beside it
        assert not any("result>" in text for text in kept)


def test_the_text_path_agrees_with_the_token_path(tasks):
    tok = train_tokenizer((t["prompt"] + t["completion"] for t in tasks), 512)  # ours: the markers are tokens
    assert marker_id(tok, RESULT_OPEN) is not None
    for task in tasks:
        ids = tok(task["prompt"] + task["completion"], add_special_tokens=False)["input_ids"]
        assert mask_tool_results_by_text(tok, ids, list(ids)) == mask_tool_results(tok, ids, list(ids))


def test_a_turn_ends_at_the_close_marker_found_in_text(tasks):
    task = next(t for t in tasks if t["domain"] == "search")
    tok = chat_tokenizer(texts=[t["prompt"] + t["completion"] for t in tasks])
    env = get_domain("search").environment(task)
    turns = Turns(tok, SamplingConfig(max_new_tokens=500))
    seq = turns.start(task["prompt"], env)
    call = task["completion"].split(RESULT_OPEN)[0]  # " <call>{...}</call>": the model's first turn
    ended_at = None
    for i, token in enumerate(tok(call, add_special_tokens=False)["input_ids"]):
        if turns.push(seq, token):
            ended_at = i
            break
    text = tok.decode(seq.ids[seq.prompt_len :])
    assert ended_at is not None and seq.tool_calls == 1 and seq.finish_reason is None
    body = json.loads(call.split("<call>")[1].split(CALL_CLOSE)[0])
    assert text.startswith(call.rstrip()) and f"{RESULT_OPEN}{env.call(json.dumps(body))}{RESULT_CLOSE}" in text
