r"""Arithmetic word problems with one or two steps on small numbers, and the math verifier.

The reference completion shows the steps, then a final ``Answer:`` line, e.g.
``" 12+7=19, 19-5=14. Answer: 14"``. The verifier reads the final answer, the last of an
``Answer:`` line, a GSM8K ``#### N`` line or a MATH ``\boxed{...}``, and compares by value with
exact rationals (``fractions.Fraction``), so "14", "14.0", "14.00", "28/2", "\frac{28}{2}" and
"14 pens" are all 14, and "1,400" is 1400. Fractions rather than
``sympy.sympify``: sympify evaluates its input as Python, which is not something to do with model
output. An expected answer that is not a number (MATH has intervals, names, expressions) is
compared as normalised LaTeX text.

A right answer reached through a false step (``" 18+18=49, 49/4=9. Answer: 9"``) is rejected
too: about 8% of a tiny expert's verified samples were such lucky guesses, and training on
them, as RL and the student do, teaches the false facts (docs/architecture.md, "Expert RL").
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from fractions import Fraction

from domains.base import ANSWER_PREFIX, OK, SourceError, Verdict, fail, final_answer, make_task

_NAMES = ["Ann", "Bob", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kim", "Lee", "Max", "Ned", "Pam", "Sam"]
_ITEMS = ["pens", "apples", "cards", "books", "eggs", "stamps", "shells", "marbles", "cups", "toys"]

# A number: integer, decimal or a fraction like 28/2.
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:\s*/\s*\d+)?")
_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: tool output, not text to learn
_GSM8K_ANSWER = re.compile(r"####[ \t]*([^\n]*)")
# \frac{a}{b}, \dfrac, \tfrac over signed integers or decimals, and the brace-less \frac12.
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+(?:\.\d+)?)\s*\}\s*\{\s*(-?\d+(?:\.\d+)?)\s*\}|\\[dt]?frac(\d)(\d)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# Spacing, sizing and math-mode marks that do not change a value.
_LATEX_NOISE = re.compile(r"\\[!,;: ]|\\left|\\right|\\displaystyle|\$|\\\$")


def last_boxed(text: str) -> tuple[int, str] | None:
    r"""(start, content) of the last ``\boxed{...}`` (braces balanced), or None."""
    at = text.rfind("\\boxed")
    while at >= 0:
        i = text.find("{", at)
        depth = 0
        for j in range(i, len(text)) if i >= 0 else ():
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return at, text[i + 1 : j]
        at = text.rfind("\\boxed", 0, at)
    return None


def extract_answer(completion: str) -> str | None:
    r"""The final answer: whichever of the last ``Answer:`` line, ``#### N`` line or ``\boxed{}`` comes last; None without any."""
    found = []
    if (text := final_answer(completion)) is not None:
        found.append((completion.rfind(ANSWER_PREFIX), text))
    if (hashes := list(_GSM8K_ANSWER.finditer(completion))):
        found.append((hashes[-1].start(), hashes[-1].group(1).strip()))
    if (boxed := last_boxed(completion)) is not None:
        found.append(boxed)
    return max(found)[1] if found else None


def normalize_latex(text: str) -> str:
    r"""An answer with LaTeX fractions as a/b, without thousands separators, spacing marks, $ or \text{}."""
    text = _LATEX_NOISE.sub("", text)
    text = re.sub(r"\\(?:text|mathrm|mbox)\{([^{}]*)\}", r"\1", text)
    text = _LATEX_FRAC.sub(lambda m: f"{m.group(1) or m.group(3)}/{m.group(2) or m.group(4)}", text)
    return _THOUSANDS.sub("", text).strip()


def answer_value(text: str, exact: bool = False) -> Fraction | None:
    """The value of an answer holding exactly one number (after `normalize_latex`), else None.

    `exact`: the answer must be the number and nothing else (an expected answer: "(3, 5)" holds
    numbers but is an interval); otherwise words around it are allowed ("14 pens").
    """
    text = normalize_latex(text)
    numbers = [text] if exact and _NUMBER.fullmatch(text) else [] if exact else _NUMBER.findall(text)
    if len(numbers) != 1:
        return None
    try:
        return Fraction(numbers[0].replace(" ", ""))
    except ZeroDivisionError:
        return None
# A stated step: numbers joined by + - * / (no parentheses), "=", a number. Starts at a number boundary.
_STEP = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?(?:\s*[-+*/]\s*\d+(?:\.\d+)?)+)\s*=\s*(-?\d+(?:\.(\d+))?)")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[-+*/]")


def _evaluate(expression: str) -> Fraction | None:
    """+ - * / over exact rationals with the usual precedence; None on division by zero."""
    tokens = _TOKEN.findall(expression)
    total, term, op = Fraction(0), Fraction(tokens[0]), "+"
    for sign, number in zip(tokens[1::2], tokens[2::2]):
        value = Fraction(number)
        if sign in "*/":
            if sign == "/" and value == 0:
                return None
            term = term * value if sign == "*" else term / value
        else:
            total, term, op = total + term if op == "+" else total - term, value, sign
    return total + term if op == "+" else total - term


def false_step(completion: str) -> str | None:
    """The first stated step whose arithmetic is wrong, or None.

    A result written with decimals may be rounded to its digits (``10/3=3.33``); an integer result
    must be exact. Steps the pattern does not cover (parentheses, words) are not checked.
    """
    for match in _STEP.finditer(completion):
        lhs, rhs, decimals = match.groups()
        value = _evaluate(lhs)
        tolerance = Fraction(5, 10 ** (len(decimals) + 1)) if decimals else Fraction(0)
        if value is None or abs(value - Fraction(rhs)) > tolerance:
            return match.group(0)
    return None


def _buy_give(r: random.Random, n: str, it: str) -> tuple[str, str, int]:
    a, b = r.randint(2, 30), r.randint(2, 20)
    c = r.randint(1, a + b)
    return (f"{n} has {a} {it}. {n} buys {b} more and gives away {c}. How many {it} does {n} have?",
            f"{a}+{b}={a + b}, {a + b}-{c}={a + b - c}.", a + b - c)


def _gets(r: random.Random, n: str, it: str) -> tuple[str, str, int]:
    a, b = r.randint(2, 50), r.randint(2, 50)
    return f"{n} has {a} {it}. {n} gets {b} more. How many {it} does {n} have now?", f"{a}+{b}={a + b}.", a + b


def _loses(r: random.Random, n: str, it: str) -> tuple[str, str, int]:
    a = r.randint(5, 60)
    b = r.randint(1, a)
    return f"{n} has {a} {it} and loses {b}. How many {it} are left?", f"{a}-{b}={a - b}.", a - b


def _packs(r: random.Random, n: str, it: str) -> tuple[str, str, int]:
    a, b = r.randint(2, 9), r.randint(2, 12)
    return f"{n} buys {a} packs of {b} {it}. How many {it} is that?", f"{a}*{b}={a * b}.", a * b


def _packs_give(r: random.Random, n: str, it: str) -> tuple[str, str, int]:
    a, b = r.randint(2, 9), r.randint(2, 12)
    c = r.randint(1, a * b)
    return (f"{n} buys {a} packs of {b} {it} and gives away {c}. How many {it} are left?",
            f"{a}*{b}={a * b}, {a * b}-{c}={a * b - c}.", a * b - c)


def _share(r: random.Random, n: str, it: str) -> tuple[str, str, int]:
    b, q = r.randint(2, 9), r.randint(2, 12)
    return (f"{n} shares {b * q} {it} equally among {b} friends. How many {it} does each friend get?",
            f"{b * q}/{b}={q}.", q)


def _buy_split(r: random.Random, n: str, it: str) -> tuple[str, str, int]:
    c, q = r.randint(2, 6), r.randint(2, 10)
    a = r.randint(1, c * q - 1)
    b = c * q - a
    return (f"{n} has {a} {it} and buys {b} more, then splits them into {c} equal groups. How many {it} are in each group?",
            f"{a}+{b}={a + b}, {a + b}/{c}={q}.", q)


def _price(r: random.Random, n: str, it: str) -> tuple[str, str, int]:
    a, b = r.randint(2, 15), r.randint(2, 9)
    return f"One of {n}'s {it} costs {a} coins. How many coins do {b} {it} cost?", f"{b}*{a}={a * b}.", a * b


_TEMPLATES: list[Callable[[random.Random, str, str], tuple[str, str, int]]] = [
    _buy_give, _gets, _loses, _packs, _packs_give, _share, _buy_split, _price,
]


class MathDomain:
    name = "math"

    def make_tasks(self, n: int, seed: int) -> list[dict]:
        r = random.Random(seed)
        tasks = []
        for i in range(n):
            question, steps, answer = r.choice(_TEMPLATES)(r, r.choice(_NAMES), r.choice(_ITEMS))
            tasks.append(make_task(self.name, seed, i, f"Q: {question}\nA:", f" {steps} Answer: {answer}",
                                   {"answer": str(answer)}))
        return tasks

    def verify(self, task: dict, completion: str) -> Verdict:
        """ok iff the last ``Answer:`` line holds exactly one number equal to the expected value
        and every step stated before it holds.

        No answer line or no number on it -> "no_answer"; several numbers (a hedge such as
        "14 or 15") -> "ambiguous_answer"; a different value -> "wrong_answer"; the right value
        after a false step -> "false_step".
        """
        text = extract_answer(completion)
        if text is None:
            return fail("no_answer")
        expected = str(json.loads(task["meta"])["answer"])
        if (want := answer_value(expected, exact=True)) is None:  # not a number: the normalised text must match
            same = _squeezed(text) == _squeezed(expected)
            return OK if same and not false_step(completion) else fail("false_step" if same else "wrong_answer")
        numbers = _NUMBER.findall(normalize_latex(text))
        if not numbers:
            return fail("no_answer")
        if len(numbers) > 1:
            return fail("ambiguous_answer")
        if answer_value(text) != want:
            return fail("wrong_answer")
        return fail("false_step") if false_step(completion) else OK

    def environment(self, task: dict) -> None:
        return None

    def format_row(self, fmt: str, r: dict) -> tuple[str, str, dict]:
        """A GSM8K or MATH record (domains/formats.py) as (prompt, completion, meta)."""
        if fmt == "gsm8k":
            _, sep, answer = r["answer"].rpartition("####")
            if not sep or not answer.strip():
                raise SourceError(f"answer has no final '#### N' line: {r['answer'][-80:]!r}")
            prompt = f"{r['question'].strip()}\nSolve step by step, then give the final answer on its own line as '#### <number>'."
            return prompt, _CALCULATOR.sub("", r["answer"]).strip(), {"answer": answer.strip()}
        boxed = last_boxed(r["solution"])
        if boxed is None:
            raise SourceError(f"solution has no \\boxed{{}} answer: {r['solution'][-80:]!r}")
        return f"{r['problem'].strip()}\nPut the final answer in \\boxed{{}}.", r["solution"].strip(), {"answer": boxed[1].strip()}


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", normalize_latex(text)).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
