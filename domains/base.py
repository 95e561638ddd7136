"""Shared interface of the task domains and the tool-call protocol.

A task is a flat dict of strings so that it can be stored as one Parquet row:
``task_id``, ``domain``, ``prompt`` (ends exactly where the model's completion begins),
``completion`` (the reference target text) and ``meta`` (a JSON string holding whatever the
verifier needs).

Tool-call protocol (agents and search domains). The model writes one call per block::

    <call>{"tool": "<name>", "args": {...}}</call>

The runtime hands the JSON between the tags to ``ToolEnv.call`` and appends the environment's
answer as ``<result>...</result>``; the model then goes on, making more calls or finishing.
Tool errors are returned as text ("error: ...") so that the model can see and react to them.
Verifiers never trust ``<result>`` text found in a completion: they replay the calls on a fresh
environment, because during training the model may have written (hallucinated) results itself.

Thinking while using tools (DeepSeek-V3.2): the model reasons in ``<think>...</think>`` before
each call, and the reference traces do so too::

    <think>read u</think><call>{"tool": "get", ...}</call><result>31</result><think>b = 31</think><call>...

Reasoning is the model's own text, so it carries loss like any other model token (tool results
never do). It is not acted on: a call or an ``Answer:`` written inside a thought is neither run
by the runtime nor read by a verifier. Within one task the reasoning stays in the sequence across
all its tool calls; when a new user turn starts, the earlier answers are shown without their
reasoning (`conversation`), V3.2's rule for what a multi-turn context keeps.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

CALL_OPEN, CALL_CLOSE = "<call>", "</call>"
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
MARKERS = (CALL_OPEN, CALL_CLOSE, RESULT_OPEN, RESULT_CLOSE, THINK_OPEN, THINK_CLOSE)
ANSWER_PREFIX = "Answer:"


@dataclass(frozen=True)
class Verdict:
    """Outcome of verifying one completion.

    ``reason`` is "ok" or a short failure class ("wrong_answer", "no_answer", "syntax_error",
    "timeout", "runtime_error", "bad_tool_call", "no_tool_call", "wrong_state", ...) so that
    failure modes can be counted across a run.
    """

    ok: bool
    score: float
    reason: str


OK = Verdict(True, 1.0, "ok")


def fail(reason: str) -> Verdict:
    return Verdict(False, 0.0, reason)


class ToolEnv(Protocol):
    def call(self, call_text: str) -> str:
        """Run the call whose JSON is ``call_text``; errors come back as text, never raised."""
        ...


class Domain(Protocol):
    name: str

    def make_tasks(self, n: int, seed: int) -> list[dict]: ...

    def verify(self, task: dict, completion: str) -> Verdict: ...

    def environment(self, task: dict) -> ToolEnv | None: ...


class SourceError(ValueError):
    """A user's task source or its column mapping does not fit: the message names the path, row or column."""


def make_task(domain: str, seed: int, index: int, prompt: str, completion: str, meta: dict) -> dict:
    """Build the flat, string-only task row every domain emits."""
    return {
        "task_id": f"{domain}-{seed}-{index}",
        "domain": domain,
        "prompt": prompt,
        "completion": completion,
        "meta": json.dumps(meta, sort_keys=True),
    }


def last_call(text: str) -> str:
    """The body of the last ``<call>...</call>`` in `text` (the call a paused generation made), or ""."""
    start = text.rfind(CALL_OPEN)
    return text[start + len(CALL_OPEN) : text.rfind(CALL_CLOSE)].strip() if start >= 0 else ""


def without_thoughts(text: str) -> str:
    """`text` with every ``<think>...</think>`` span removed; a thought never closed runs to the end."""
    out, at = [], 0
    while (start := text.find(THINK_OPEN, at)) >= 0:
        out.append(text[at:start])
        end = text.find(THINK_CLOSE, start)
        if end < 0:
            return "".join(out)
        at = end + len(THINK_CLOSE)
    return "".join(out) + text[at:]


def in_thought(text: str) -> bool:
    """Whether `text` ends inside a thought: its last ``<think>`` is not closed."""
    return text.rfind(THINK_OPEN) > text.rfind(THINK_CLOSE)


def conversation(turns: list[tuple[str, str]], question: str) -> str:
    """The prompt of a new user turn after earlier (question, answer) exchanges.

    Earlier answers keep their calls and results but lose their reasoning: a new user turn drops
    the reasoning of the turns before it (V3.2's context rule), while within a turn it is kept.
    """
    history = "".join(f"Q: {q}\nA:{without_thoughts(a)}\n" for q, a in turns)
    return f"{history}Q: {question}\nA:"


def final_answer(completion: str) -> str | None:
    """Text after the last ``Answer:`` up to the end of that line, or None without one.

    Only the last answer counts: a number or name mentioned earlier in the working is not an
    answer, nor is one written inside a thought.
    """
    completion = without_thoughts(completion)
    at = completion.rfind(ANSWER_PREFIX)
    if at < 0:
        return None
    return completion[at + len(ANSWER_PREFIX) :].split("\n", 1)[0].strip()


_RESULT_RE = re.compile(re.escape(RESULT_OPEN) + ".*?" + re.escape(RESULT_CLOSE), re.DOTALL)
_CALL_RE = re.compile(re.escape(CALL_OPEN) + "(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)


def _without_results(completion: str) -> str:
    # Result text comes from the environment (or was made up by the model), and thoughts are not
    # acted on: calls inside either are not calls.
    return _RESULT_RE.sub("", without_thoughts(completion))


def split_calls(completion: str) -> list[str]:
    """The JSON text of each closed ``<call>...</call>`` block, in order, ignoring ``<result>`` blocks and thoughts."""
    return [m.group(1).strip() for m in _CALL_RE.finditer(_without_results(completion))]


class BadCall(Exception):
    """The call is not a valid call of this environment: bad JSON, unknown tool or wrong arguments."""


class ToolError(Exception):
    """A well-formed call that the tool refuses (e.g. not enough stock); reported to the model as text."""


class SimEnv:
    """Base of the simulated environments: parses calls, checks arguments against ``TOOLS`` and
    dispatches to the ``_<tool>`` method.

    ``TOOLS`` maps a tool name to its argument names and types; arguments must match exactly so
    that a verifier can tell a malformed call (``BadCall``) from a refused one (``ToolError``).
    ``LOOKUPS`` names the tools that read the state without changing it.
    """

    TOOLS: ClassVar[dict[str, dict[str, type]]] = {}
    LOOKUPS: ClassVar[set[str]] = set()
    THOUGHTS: ClassVar[dict[str, str]] = {}  # per tool, the reasoning a reference writes before a call (its args fill it)

    def call(self, call_text: str) -> str:
        try:
            return self.invoke(call_text)
        except BadCall as e:
            return f"error: {e}"

    def invoke(self, call_text: str) -> str:
        """Like ``call`` but raises ``BadCall`` for malformed calls (tool refusals stay text)."""
        tool, args = self._parse(call_text)
        try:
            return getattr(self, f"_{tool}")(**args)
        except ToolError as e:
            return f"error: {e}"

    def _parse(self, call_text: str) -> tuple[str, dict[str, Any]]:
        try:
            obj = json.loads(call_text)
        except json.JSONDecodeError as e:
            raise BadCall(f"invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or set(obj) != {"tool", "args"} or not isinstance(obj["args"], dict):
            raise BadCall('expected {"tool": <name>, "args": {...}}')
        tool, args = obj["tool"], obj["args"]
        if not isinstance(tool, str) or tool not in self.TOOLS:
            raise BadCall(f"unknown tool {tool!r}")
        schema = self.TOOLS[tool]
        if set(args) != set(schema):
            raise BadCall(f"{tool} takes args {sorted(schema)}")
        for key, typ in schema.items():
            # bool is a subclass of int in Python but never a valid quantity here.
            if not isinstance(args[key], typ) or isinstance(args[key], bool):
                raise BadCall(f"{tool}: {key} must be {typ.__name__}")
        return tool, args


def replay(env: SimEnv, completion: str) -> Verdict | None:
    """Run the completion's calls in order on ``env``; a failing Verdict if any call is malformed
    (or there is none), else None. The completion's own ``<result>`` text is ignored."""
    calls = split_calls(completion)
    if not calls:
        return fail("no_tool_call")
    if _without_results(completion).count(CALL_OPEN) != len(calls):
        return fail("bad_tool_call")  # an unclosed <call>
    for call_text in calls:
        try:
            env.invoke(call_text)
        except BadCall:
            return fail("bad_tool_call")
    return None


def call_json(tool: str, **args: Any) -> str:
    """Canonical JSON text of a call, as reference completions write it."""
    return json.dumps({"tool": tool, "args": args})


def thought(env: SimEnv, call_text: str) -> str:
    """The short reasoning a reference trace writes before `call_text`: the env's `THOUGHTS` line for its tool."""
    call = json.loads(call_text)
    return env.THOUGHTS[call["tool"]].format(**call["args"])


def trace(env: SimEnv, calls: list[str], thoughts: list[str] | None = None) -> str:
    """Reference trace: each call after its reasoning (`thoughts`, else `thought`'s), followed by
    the environment's real answer to it."""
    if thoughts is None:
        thoughts = [thought(env, c) for c in calls]
    return "".join(
        f"{THINK_OPEN}{t}{THINK_CLOSE}{CALL_OPEN}{c}{CALL_CLOSE}{RESULT_OPEN}{env.call(c)}{RESULT_CLOSE}" for t, c in zip(thoughts, calls, strict=True)
    )
