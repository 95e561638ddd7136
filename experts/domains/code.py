"""Write-a-small-function tasks, verified by running assertions in the sandbox.

Each template pairs the English spec with the reference body and an independent Python oracle
that computes the expected outputs for the test assertions, so a wrong reference body would
fail its own tests rather than silently define the truth.
"""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from experts.domains.base import OK, Verdict, fail, make_task
from experts.domains.sandbox import run_sandboxed

# Names vary so that tasks from different seeds rarely coincide; the template set is small.
_FUNC_NAMES = ["f", "g", "h", "calc", "solve", "get", "fn", "compute", "value", "work"]
_INT_NAMES = ["x", "n", "v", "num"]
_PAIR_NAMES = [("a", "b"), ("x", "y"), ("p", "q"), ("i", "j")]
_LIST_NAMES = ["xs", "nums", "items", "vals"]
_STR_NAMES = ["s", "word", "text", "t"]
_N_TESTS = 4

# Test inputs get the task's constants ``c`` so they can be aimed where a near-miss solution
# would differ from the spec (around the threshold, containing the digit being counted, longer
# than the prefix taken), rather than drawn blindly.


def _int(r: random.Random, c: dict) -> tuple:
    return (r.randint(-10, 40),)


def _near_k(r: random.Random, c: dict) -> tuple:
    return (c["k"] + r.randint(-3, 3),)


def _pair(r: random.Random, c: dict) -> tuple:
    return (r.randint(-10, 40), r.randint(-10, 40))


def _digits(r: random.Random, c: dict) -> tuple:
    return ([r.randint(0, 9) for _ in range(r.randint(0, 7))],)


def _long_digits(r: random.Random, c: dict) -> tuple:
    return ([r.randint(0, 9) for _ in range(r.randint(c["i"] + 1, 8))],)


def _digits_with_d(r: random.Random, c: dict) -> tuple:
    return ([r.choice([c["d"], r.randint(0, 9)]) for _ in range(r.randint(0, 7))],)


def _word(r: random.Random, c: dict) -> tuple:
    return ("".join(r.choice("abcxyz") for _ in range(r.randint(1, 4))),)


@dataclass(frozen=True)
class _Template:
    # Constants: {k} 1-30, {m} 2-12, {d} a digit, {i} 1-4. Parameter names, drawn per task:
    # {x}, {a}/{b}, {xs}, {s}.
    spec: str  # what the function returns
    params: str
    body: str
    oracle: Callable[[dict], Callable[..., object]]
    inputs: Callable[[random.Random, dict], tuple]


_TEMPLATES = [
    _Template("{x} plus {k}", "{x}", "{x} + {k}", lambda c: lambda x: x + c["k"], _int),
    _Template("{x} minus {k}", "{x}", "{x} - {k}", lambda c: lambda x: x - c["k"], _int),
    _Template("{x} times {m}", "{x}", "{x} * {m}", lambda c: lambda x: x * c["m"], _int),
    _Template("{x} times {m} plus {k}", "{x}", "{x} * {m} + {k}", lambda c: lambda x: x * c["m"] + c["k"], _int),
    _Template("{x} modulo {m}", "{x}", "{x} % {m}", lambda c: lambda x: x % c["m"], _int),
    _Template("True if {x} is greater than {k}, else False", "{x}", "{x} > {k}", lambda c: lambda x: x > c["k"], _near_k),
    _Template("the larger of {a} and {b}", "{a}, {b}", "max({a}, {b})", lambda c: max, _pair),
    _Template("the smaller of {a} and {b}", "{a}, {b}", "min({a}, {b})", lambda c: min, _pair),
    _Template("the list {xs} reversed", "{xs}", "{xs}[::-1]", lambda c: lambda xs: list(reversed(xs)), _digits),
    _Template("the sum of the list {xs}", "{xs}", "sum({xs})", lambda c: sum, _digits),
    _Template("the sum of the list {xs} plus {k}", "{xs}", "sum({xs}) + {k}", lambda c: lambda xs: sum(xs) + c["k"], _digits),
    _Template("how many times {d} appears in the list {xs}", "{xs}", "{xs}.count({d})",
              lambda c: lambda xs: sum(v == c["d"] for v in xs), _digits_with_d),
    _Template("the first {i} items of the list {xs}", "{xs}", "{xs}[:{i}]", lambda c: lambda xs: xs[: c["i"]], _long_digits),
    _Template("the list {xs} with each item times {m}", "{xs}", "[v * {m} for v in {xs}]",
              lambda c: lambda xs: [v * c["m"] for v in xs], _digits),
    _Template("the string {s} repeated {m} times", "{s}", "{s} * {m}", lambda c: lambda s: s * c["m"], _word),
    _Template("the length of the string {s} plus {k}", "{s}", "len({s}) + {k}", lambda c: lambda s: len(s) + c["k"], _word),
    # Two operations: the spec has to be composed, not copied.
    _Template("{x} times {m} minus {k}", "{x}", "{x} * {m} - {k}", lambda c: lambda x: x * c["m"] - c["k"], _int),
    _Template("the sum of the list {xs} times {m}", "{xs}", "sum({xs}) * {m}", lambda c: lambda xs: sum(xs) * c["m"], _digits),
    _Template("the largest item of the list {xs} plus {k}", "{xs}", "max({xs}) + {k}", lambda c: lambda xs: max(xs) + c["k"], _long_digits),
    _Template("how many items of the list {xs} are greater than {d}", "{xs}", "len([v for v in {xs} if v > {d}])",
              lambda c: lambda xs: sum(v > c["d"] for v in xs), _digits_with_d),
    _Template("the list {xs} with {k} added to each item", "{xs}", "[v + {k} for v in {xs}]",
              lambda c: lambda xs: [v + c["k"] for v in xs], _digits),
    _Template("the string {s} reversed, repeated {m} times", "{s}", "{s}[::-1] * {m}", lambda c: lambda s: s[::-1] * c["m"], _word),
]


def _make(r: random.Random) -> tuple[str, str, list[str]]:
    t = r.choice(_TEMPLATES)
    a, b = r.choice(_PAIR_NAMES)
    c = {"k": r.randint(1, 30), "m": r.randint(2, 12), "d": r.randint(0, 9), "i": r.randint(1, 4)}
    names = {"a": a, "b": b, "x": r.choice(_INT_NAMES), "xs": r.choice(_LIST_NAMES), "s": r.choice(_STR_NAMES)}
    name = r.choice(_FUNC_NAMES)
    params = t.params.format(**names)
    oracle = t.oracle(c)
    prompt = f"Q: Write a function {name}({params}) that returns {t.spec.format(**c, **names)}.\nA:\n"
    source = f"def {name}({params}):\n    return {t.body.format(**c, **names)}\n"
    tests: list[str] = []
    for _ in range(4 * _N_TESTS):  # inputs can repeat; stop once there are enough distinct tests
        args = t.inputs(r, c)
        test = f"assert {name}({', '.join(map(repr, args))}) == {oracle(*args)!r}"
        if test not in tests:
            tests.append(test)
        if len(tests) == _N_TESTS:
            break
    return prompt, source, tests


def run_checks(candidate: str, checks: list[str], timeout_s: float) -> Verdict:
    """Run ``candidate`` followed by the ``checks`` (statements that raise AssertionError on a
    wrong answer) in the sandbox; the reason of a failure is the sandbox's outcome class.

    The candidate is compiled in-process first (parsing only, nothing runs): it must be valid on
    its own, so that it cannot combine with the checks after it (open a string that a check
    closes, say) into a program that skips them.
    A random end marker printed after the last check must end stdout, so a candidate cannot pass
    by exiting early with status 0 (``sys.exit(0)`` at top level).
    """
    try:
        compile(candidate, "<candidate>", "exec")
    except (SyntaxError, ValueError):  # ValueError: source with NUL bytes
        return fail("syntax_error")
    marker = f"all-tests-passed-{secrets.token_hex(8)}"
    result = run_sandboxed("\n".join([candidate, "", *checks, f"print({marker!r})", ""]), timeout_s)
    if result.status == "ok":
        return OK if result.stdout.rstrip().endswith(marker) else fail("runtime_error")
    return fail(result.status)


class CodeDomain:
    """``timeout_s`` bounds each verification's wall clock (the sandbox adds CPU and memory limits)."""

    name = "code"

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s

    def make_tasks(self, n: int, seed: int) -> list[dict]:
        r = random.Random(seed)
        tasks = []
        for i in range(n):
            prompt, source, tests = _make(r)
            tasks.append(make_task(self.name, seed, i, prompt, source, {"tests": tests}))
        return tasks

    def verify(self, task: dict, completion: str) -> Verdict:
        return run_checks(completion, json.loads(task["meta"])["tests"], self.timeout_s)

    def environment(self, task: dict) -> None:
        return None
