"""Write-a-small-function tasks, verified by calling the function in the sandbox (`domains.calls`).

Each template pairs the English spec with the reference body and an independent Python oracle
that computes the expected outputs for the test assertions, so a wrong reference body would
fail its own tests rather than silently define the truth.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from domains.base import Verdict, make_task
from domains.calls import CheckError, calls_from_asserts, run_calls

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
    return (c["k"] + r.choice([-3, -1, 0, 0, 1, 3]),)  # k itself often: where > and >= differ


def _pair(r: random.Random, c: dict) -> tuple:
    return (r.randint(-10, 40), r.randint(-10, 40))


def _digits(r: random.Random, c: dict) -> tuple:
    return ([r.randint(0, 9) for _ in range(r.randint(0, 7))],)


def _long_digits(r: random.Random, c: dict) -> tuple:
    return ([r.randint(0, 9) for _ in range(r.randint(c["i"] + 1, 8))],)


def _digits_with_d(r: random.Random, c: dict) -> tuple:
    near = [c["d"] - 1, c["d"], c["d"], c["d"] + 1]
    return ([r.choice([*near, r.randint(0, 9)]) for _ in range(r.randint(0, 7))],)


def _close_pair(r: random.Random, c: dict) -> tuple:
    a = r.randint(-10, 40)
    return (a, a + r.choice([-1, 0, 0, 1]))


def _word(r: random.Random, c: dict) -> tuple:
    return ("".join(r.choice("abcxyz") for _ in range(r.randint(1, 4))),)


def _long_word(r: random.Random, c: dict) -> tuple:
    return ("".join(r.choice("abcxyz") for _ in range(r.randint(c["i"] + 1, 6))),)


@dataclass(frozen=True)
class _Template:
    # Constants: {k} 1-30, {m} 2-12, {d} a digit 2-8 (items on both sides of it: "less than 1" keeps only zeros), {i} 1-4.
    # Parameter names, drawn per task: {x}, {a}/{b}, {xs}, {s}.
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
    _Template("the list {xs} with {k} added to each item", "{xs}", "[v + {k} for v in {xs}]",
              lambda c: lambda xs: [v + c["k"] for v in xs], _digits),
    _Template("the string {s} reversed, repeated {m} times", "{s}", "{s}[::-1] * {m}", lambda c: lambda s: s[::-1] * c["m"], _word),
    # Branches, filters and several constants in one body: with only the templates above the
    # code expert solved 99% after SFT, which left RL nothing to measure.
    _Template("{x} times {m} if {x} is greater than {k}, else {x} plus {k}", "{x}", "{x} * {m} if {x} > {k} else {x} + {k}",
              lambda c: lambda x: x * c["m"] if x > c["k"] else x + c["k"], _near_k),
    _Template("{x} minus {k} if {x} is even, else {x} times {m}", "{x}", "{x} - {k} if {x} % 2 == 0 else {x} * {m}",
              lambda c: lambda x: x - c["k"] if x % 2 == 0 else x * c["m"], _int),
    _Template("{a} minus {b} if {a} is at least {b}, else {b} times {m}", "{a}, {b}", "{a} - {b} if {a} >= {b} else {b} * {m}",
              lambda c: lambda a, b: a - b if a >= b else b * c["m"], _close_pair),
    _Template("the absolute difference of {a} and {b}, plus {k}", "{a}, {b}", "abs({a} - {b}) + {k}",
              lambda c: lambda a, b: (a - b if a > b else b - a) + c["k"], _pair),
    _Template("the largest item of the list {xs} minus the smallest", "{xs}", "max({xs}) - min({xs})",
              lambda c: lambda xs: sorted(xs)[-1] - sorted(xs)[0], _long_digits),
    _Template("the sum of the first {i} items of the list {xs}, times {m}", "{xs}", "sum({xs}[:{i}]) * {m}",
              lambda c: lambda xs: sum(xs[: c["i"]]) * c["m"], _long_digits),
    _Template("the list {xs} sorted from largest to smallest", "{xs}", "sorted({xs}, reverse=True)",
              lambda c: lambda xs: sorted(xs)[::-1], _digits),
    _Template("the string {s} with its first {i} characters moved to the end", "{s}", "{s}[{i}:] + {s}[:{i}]",
              lambda c: lambda s: "".join(s[(j + c["i"]) % len(s)] for j in range(len(s))), _long_word),
    _Template("the string {s} with each character repeated {m} times", "{s}", '"".join(ch * {m} for ch in {s})',
              lambda c: lambda s: "".join(sum(([ch] * c["m"] for ch in s), [])), _word),
]


# A combinatorial family: filter x map x reduce, each part with its own phrase, body fragment
# and oracle piece. Its 147 shapes are more than the seed split holds examples of, so the
# expert has to compose phrases it saw apart; with the hand-written templates alone the code
# expert solved 99% after SFT (on a correctly loaded base), which left RL nothing to measure.
_CONDITIONS = [  # phrase, body (of the item v), oracle
    ("greater than {d}", "v > {d}", lambda c: lambda v: v > c["d"]),
    ("less than {d}", "v < {d}", lambda c: lambda v: v < c["d"]),
    ("at least {d}", "v >= {d}", lambda c: lambda v: not v < c["d"]),
    ("at most {d}", "v <= {d}", lambda c: lambda v: not v > c["d"]),
    ("different from {d}", "v != {d}", lambda c: lambda v: v - c["d"] != 0),
    ("even", "v % 2 == 0", lambda c: lambda v: v & 1 == 0),
    ("odd", "v % 2 == 1", lambda c: lambda v: v & 1 == 1),
]
_MAPS = [
    ("", "v", lambda c: lambda v: v),
    (", each times {m}", "v * {m}", lambda c: lambda v: v * c["m"]),
    (", each plus {k}", "v + {k}", lambda c: lambda v: v + c["k"]),
    (", each minus {k}", "v - {k}", lambda c: lambda v: v - c["k"]),
    (", each squared", "v * v", lambda c: lambda v: v**2),
]
_REDUCERS = [  # spec around "the items of {xs} that are <cond><map>", body around the comprehension
    ("{items}", "[{comp}]", lambda vs: vs),
    ("the sum of {items}", "sum([{comp}])", lambda vs: sum(vs)),
    ("{items}, sorted from largest to smallest", "sorted([{comp}], reverse=True)", lambda vs: sorted(vs)[::-1]),
    ("the largest of {items}, or 0 if none", "max([{comp}], default=0)", lambda vs: sorted([0] if not vs else vs)[-1]),
]


def _composed(cond: tuple, mapping: tuple, reducer: tuple) -> _Template:
    (c_phrase, c_body, c_oracle), (m_phrase, m_body, m_oracle), (r_phrase, r_body, r_oracle) = cond, mapping, reducer
    items = "the items of the list {xs} that are " + c_phrase + m_phrase
    comp = m_body + " for v in {xs} if " + c_body

    def oracle(c: dict) -> Callable[[list[int]], object]:
        keep, apply = c_oracle(c), m_oracle(c)
        return lambda xs: r_oracle(list(map(apply, filter(keep, xs))))

    return _Template(r_phrase.replace("{items}", items), "{xs}", r_body.replace("{comp}", comp), oracle, _digits_with_d)


def _count(cond: tuple) -> _Template:
    phrase, body, c_oracle = cond
    return _Template("how many items of the list {xs} are " + phrase, "{xs}", "len([v for v in {xs} if " + body + "])",
                     lambda c: lambda xs: len(list(filter(c_oracle(c), xs))), _digits_with_d)


_COMPOSED = [_composed(cond, m, red) for red in _REDUCERS for cond in _CONDITIONS for m in _MAPS]
_COMPOSED += [_count(cond) for cond in _CONDITIONS]


def _make(r: random.Random, t: _Template) -> tuple[str, str, list[str]]:
    a, b = r.choice(_PAIR_NAMES)
    c = {"k": r.randint(1, 30), "m": r.randint(2, 12), "d": r.randint(2, 8), "i": r.randint(1, 4)}
    names = {"a": a, "b": b, "x": r.choice(_INT_NAMES), "xs": r.choice(_LIST_NAMES), "s": r.choice(_STR_NAMES)}
    name = r.choice(_FUNC_NAMES)
    params = t.params.format(**names)
    oracle = t.oracle(c)
    prompt = f"Q: Write a function {name}({params}) that returns {t.spec.format(**c, **names)}.\nA:\n"
    source = f"def {name}({params}):\n    return {t.body.format(**c, **names)}\n"
    tests: list[str] = []
    outputs: set[str] = set()
    for _ in range(16 * _N_TESTS):  # inputs can repeat; stop once there are enough distinct tests
        args = t.inputs(r, c)
        out = repr(oracle(*args))
        test = f"assert {name}({', '.join(map(repr, args))}) == {out}"
        # The last test must bring a second output if the others agree: else a function that
        # returns a constant passes.
        if test in tests or (len(tests) == _N_TESTS - 1 and outputs == {out}):
            continue
        tests.append(test)
        outputs.add(out)
        if len(tests) == _N_TESTS:
            break
    return prompt, source, tests


class CodeDomain:
    """``timeout_s`` bounds each verification's wall clock (the sandbox adds CPU and memory limits)."""

    name = "code"

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s

    def make_tasks(self, n: int, seed: int) -> list[dict]:
        r = random.Random(seed)
        tasks = []
        for i in range(n):
            # Half from each family: the hand-written shapes are few and each is seen often.
            prompt, source, tests = _make(r, r.choice(r.choice([_TEMPLATES, _COMPOSED])))
            tasks.append(make_task(self.name, seed, i, prompt, source, {"tests": tests}))
        return tasks

    def verify(self, task: dict, completion: str) -> Verdict:
        entry_point, calls = calls_from_asserts(json.loads(task["meta"])["tests"])
        return run_calls(completion, entry_point, calls, self.timeout_s)

    def environment(self, task: dict) -> None:
        return None

    def format_row(self, fmt: str, r: dict) -> tuple[str, str, dict] | None:
        """An MBPP record (domains/formats.py) as (prompt, completion, meta); None when its asserts cannot be judged on the host."""
        tests = [str(t) for t in r["test_list"]]
        try:
            calls_from_asserts(tests)
        except CheckError:
            return None
        prompt = f"{r['text'].strip()}\nYour code should pass these tests:\n" + "\n".join(tests) + "\n"
        return prompt, r["code"].replace("\r\n", "\n").strip() + "\n", {"tests": tests}
