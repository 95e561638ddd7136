"""Code verified by recorded calls: the sandbox reports values, the host judges them.

A code task's tests are a list of *calls*: arguments for the entry point, and how its result
must compare with an expected value that stays on the host. The sandbox runs
`domains.call_harness`, which calls the candidate and prints the results strictly encoded; the
host decodes them and compares (`judge`). Nothing the candidate can do inside the sandbox makes a
wrong answer pass: there is no success marker to print, no assert to disarm, no expected value
to read, and a result that is not made of exact builtin types (an object whose ``__eq__`` always
says True, a subclass of ``int``) is refused before any comparison.

A call is a JSON dict::

    {"args": [<encoded>...], "kwargs": {name: <encoded>}, "compare": "eq" | "close" | "truthy" | "falsy",
     "expected": <encoded>, "tol": 1e-6, "normalize": "tuple" | "list" | "set" | "frozenset" | "sorted"}

``compare`` says what the original assert said of the result ``r`` (the expected value ``e``):
``eq``: ``r == e``; ``close``: ``abs(r - e) < tol``; ``truthy``/``falsy``: ``r`` / ``not r``.
``normalize`` is applied to ``r`` first, on the host (``tuple(candidate(x)) == ...``).
Equality is Python's on exact types, with two choices stated here: ints and floats compare by
value, a float within `FLOAT_REL_TOL` (or `FLOAT_ABS_TOL` near zero) of the expected value;
``bool`` never equals ``int`` (``True`` is not an answer to "how many").

Tests arrive in two shapes, both turned into calls:

* assert statements over literals, ``assert f(3, [1, 2]) == 7`` (our code domain, MBPP-style
  data): parsed on the host (`calls_from_asserts`), nothing executed;
* a HumanEval ``check(candidate)`` function, whose asserts compute their inputs and expected
  values: rewritten (`rewrite_check`) so that each assert on the candidate becomes a recorded
  call, then run once with the reference solution in the sandbox to record the values
  (`record_calls`). A check that is not a list of such asserts (HumanEval/32 checks that the
  answer is a root of a polynomial: any root passes) has its calls' arguments recorded the same
  way (`record_arguments`); the candidate's results for them are then handed to the check,
  replayed in a second sandbox run that holds the reference solution and the check but none of
  the candidate's code (`run_replayed`).
"""

from __future__ import annotations

import ast
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from domains import call_harness
from domains.base import OK, Verdict, fail
from domains.call_harness import RESULTS_PREFIX, Unsupported, decode, encode
from domains.sandbox import run_sandboxed

FLOAT_REL_TOL = 1e-9
FLOAT_ABS_TOL = 1e-12
COMPARES = ("eq", "close", "truthy", "falsy")
NORMALIZERS: dict[str, Callable[[Any], Any]] = {
    "tuple": tuple, "list": list, "set": set, "frozenset": frozenset, "sorted": sorted,
}
_HARNESS = Path(call_harness.__file__).read_text(encoding="utf-8")
# A model's candidate code compiled here (to tell a syntax error from a failure) would print the
# compiler's SyntaxWarnings ("'int' object is not subscriptable") into the pipeline's log. A filter
# on their file name, not `catch_warnings`, which swaps the filters of every thread.
warnings.filterwarnings("ignore", category=SyntaxWarning, module="<candidate>$")


class CheckError(ValueError):
    """A test that cannot become calls: the message names it and says what is wrong."""


# -- comparing, on the host -------------------------------------------------------------------


def same(got: Any, expected: Any) -> bool:
    """Equality of decoded values, with the type rules of the module docstring."""
    numbers = (int, float)
    if type(got) in numbers and type(expected) in numbers:
        if type(got) is float or type(expected) is float:
            if math.isnan(got) or math.isnan(expected):
                return math.isnan(got) and math.isnan(expected)
            return math.isclose(got, expected, rel_tol=FLOAT_REL_TOL, abs_tol=FLOAT_ABS_TOL)
        return got == expected
    if type(got) is not type(expected):
        return False
    if type(got) in (list, tuple):
        return len(got) == len(expected) and all(same(g, e) for g, e in zip(got, expected))
    if type(got) is dict:
        return got.keys() == expected.keys() and all(same(got[k], expected[k]) for k in expected)
    return got == expected  # str, bytes, bool, None; sets by Python's equality of their members


def judge(outcome: Any, call: dict) -> str | None:
    """None when the harness's ``outcome`` for ``call`` is right, else the failure reason."""
    if outcome == ["raised"]:
        return "runtime_error"
    if outcome == ["unsupported"]:
        return "bad_result_type"
    try:
        tag, encoded = outcome
        if tag != "ok":
            raise ValueError(tag)
        got = decode(encoded)
        if call.get("normalize"):
            got = NORMALIZERS[call["normalize"]](got)
    except (TypeError, ValueError):  # a malformed line, an unhashable set member, sorted() of mixed types
        return "wrong_answer"
    compare = call.get("compare", "eq")
    if compare == "truthy":
        right = bool(got)
    elif compare == "falsy":
        right = not got
    elif compare == "close":
        right = type(got) in (int, float) and abs(got - decode(call["expected"])) < call["tol"]
    else:
        right = same(got, decode(call["expected"]))
    return None if right else "wrong_answer"


# -- running, in the sandbox ------------------------------------------------------------------


def _program(function: str, *args: Any) -> str:
    """The harness's source followed by one call of its ``function`` with JSON-able ``args``."""
    return f"{_HARNESS}\n\n{function}(*json.loads({json.dumps(list(args))!r}))\n"


def _results(stdout: str) -> Any:
    """The payload of the last results line of ``stdout``, or None."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULTS_PREFIX):
            try:
                return json.loads(line[len(RESULTS_PREFIX):])
            except json.JSONDecodeError:
                return None
    return None


def _compiles(source: str) -> bool:
    """Parsing only, nothing runs: a candidate that does not compile on its own fails as such."""
    try:
        compile(source, "<candidate>", "exec")
    except (SyntaxError, ValueError):  # ValueError: source with NUL bytes
        return False
    return True


def call_program(source: str, entry_point: str, calls: Sequence[dict]) -> str:
    """The program the sandbox runs for `run_calls`: the calls' arguments only, never what they should return."""
    sent = [{k: v for k, v in c.items() if k in ("args", "kwargs")} for c in calls]
    return _program("call_entry_point", source, entry_point, sent)


def _outcomes(source: str, entry_point: str, calls: Sequence[dict], timeout_s: float) -> list | Verdict:
    """The harness's outcome of each call (see `call_harness.call_entry_point`), or the failing Verdict."""
    if not _compiles(source):
        return fail("syntax_error")
    result = run_sandboxed(call_program(source, entry_point, calls), timeout_s)
    if result.status != "ok":
        return fail(result.status)
    outcomes = _results(result.stdout)
    if isinstance(outcomes, dict) and "missing" in outcomes:
        return fail("no_entry_point")
    if not isinstance(outcomes, list) or len(outcomes) != len(calls):
        return fail("no_result")
    return outcomes


def run_calls(source: str, entry_point: str, calls: Sequence[dict], timeout_s: float) -> Verdict:
    """Call ``entry_point`` of ``source`` with each call's arguments in the sandbox and judge the
    results on the host. Reasons: the sandbox's outcome classes, ``no_entry_point``,
    ``no_result`` (the program ended without reporting: an early exit), ``runtime_error`` (a
    call raised), ``bad_result_type`` and ``wrong_answer``."""
    outcomes = _outcomes(source, entry_point, calls, timeout_s)
    if isinstance(outcomes, Verdict):
        return outcomes
    for outcome, call in zip(outcomes, calls):
        reason = judge(outcome, call)
        if reason is not None:
            return fail(reason)
    return OK


def run_replayed(source: str, reference: str, check: str, entry_point: str, calls: Sequence[dict], timeout_s: float) -> Verdict:
    """For a check that is not a list of asserts: the candidate's results for the recorded
    ``calls`` (one sandbox run, as in `run_calls`), then the check run against those results in a
    second sandbox run that holds only the ``reference`` source and the check (`call_harness.replay_check`):
    whatever the candidate does in its own process, the check that judges it never meets its code."""
    outcomes = _outcomes(source, entry_point, calls, timeout_s)
    if isinstance(outcomes, Verdict):
        return outcomes
    for outcome in outcomes:
        if reason := {"raised": "runtime_error", "unsupported": "bad_result_type"}.get(outcome[0] if outcome else ""):
            return fail(reason)
    results = [encoded for _, encoded in outcomes]
    replay = run_sandboxed(_program("replay_check", reference, check, entry_point, list(calls), results), timeout_s)
    if replay.status == "ok" and _results(replay.stdout) == "pass":
        return OK
    return fail("wrong_answer" if replay.status in ("ok", "wrong_answer", "runtime_error") else replay.status)


def _recorded(harness_function: str, source: str, check: str, entry_point: str, timeout_s: float) -> list[dict]:
    result = run_sandboxed(_program(harness_function, source, check, entry_point), timeout_s)
    calls = _results(result.stdout)
    if result.status != "ok" or not isinstance(calls, list):
        raise CheckError(f"recording the calls of {entry_point}'s check failed ({result.status}): {result.stderr.strip()[-500:]}")
    return calls


def record_arguments(source: str, check: str, entry_point: str, timeout_s: float = 60.0) -> list[dict]:
    """The arguments of each call ``check`` makes of ``entry_point``, recorded with the reference ``source``."""
    return _recorded("record_arguments", source, check, entry_point, timeout_s)


def record_calls(source: str, check: str, entry_point: str, timeout_s: float = 60.0) -> list[dict]:
    """The calls that ``check`` (already rewritten) makes, recorded by running it with
    ``source`` (which defines ``entry_point``) in the sandbox."""
    return _recorded("record_check", source, check, entry_point, timeout_s)


# -- turning tests into calls -----------------------------------------------------------------


def _call_of(node: ast.expr, callee: str | None) -> ast.Call | None:
    """``node`` if it is a plain call of ``callee`` (of any simple name when None)."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (callee is None or node.func.id == callee)
            and all(k.arg is not None for k in node.keywords)):
        return node
    return None


def _result_of(node: ast.expr, callee: str | None) -> tuple[ast.Call, str | None] | None:
    """(the call, a normalizer or None) when ``node`` is ``callee(...)`` or ``tuple(callee(...))``-like."""
    if call := _call_of(node, callee):
        if callee is not None or call.func.id not in NORMALIZERS:
            return call, None
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in NORMALIZERS
            and len(node.args) == 1 and not node.keywords and (call := _call_of(node.args[0], callee))):
        return call, node.func.id
    return None


def _is_abs(node: ast.expr) -> bool:
    """``abs`` or ``math.fabs``."""
    return (isinstance(node, ast.Name) and node.id == "abs") or (
        isinstance(node, ast.Attribute) and node.attr == "fabs" and isinstance(node.value, ast.Name) and node.value.id == "math")


def match_assert(test: ast.expr, callee: str | None) -> tuple[str, ast.Call, str | None, ast.expr | None, ast.expr | None] | None:
    """(compare, the call, normalize, expected, tol) when the assert's ``test`` is one of the forms
    ``C``, ``not C``, ``C == E``, ``E == C``, ``C is None`` (or True, False), ``abs(C - E) < tol`` (or ``E - C``,
    or ``math.fabs``), with ``C`` a call of ``callee`` (maybe normalized), else None."""
    if found := _result_of(test, callee):
        return "truthy", found[0], found[1], None, None
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and (found := _result_of(test.operand, callee)):
        return "falsy", found[0], found[1], None, None
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    left, op, right = test.left, test.ops[0], test.comparators[0]
    # `is` only with None, True or False, whose identity is their equality under `same`.
    if isinstance(op, ast.Eq) or (isinstance(op, ast.Is) and isinstance(right, ast.Constant)
                                  and any(right.value is v for v in (None, True, False))):
        for side, other in ((left, right), (right, left)):
            if found := _result_of(side, callee):
                return "eq", found[0], found[1], other, None
    if (isinstance(op, ast.Lt) and isinstance(left, ast.Call) and _is_abs(left.func) and len(left.args) == 1
            and isinstance(diff := left.args[0], ast.BinOp) and isinstance(diff.op, ast.Sub)):
        for side, other in ((diff.left, diff.right), (diff.right, diff.left)):
            if call := _call_of(side, callee):
                return "close", call, None, other, right
    return None


def _mentions(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


class _Recorder(ast.NodeTransformer):
    def __init__(self, callee: str) -> None:
        self.callee = callee

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        found = match_assert(node.test, self.callee)
        if found is None:
            return node
        compare, call, normalize, expected, tol = found
        if any(_mentions(n, self.callee) for n in (*call.args, *call.keywords, expected, tol) if n is not None):
            return node  # the candidate feeds its own input or expectation: stays, and makes the check unrewritable
        record = ast.Call(
            func=ast.Name("_record", ast.Load()),
            args=[
                ast.Constant(compare),
                ast.Tuple(list(call.args), ast.Load()),
                ast.Dict([ast.Constant(k.arg) for k in call.keywords], [k.value for k in call.keywords]),
                expected if compare in ("eq", "close") else ast.Constant(None),
                tol if tol is not None else ast.Constant(None),
                ast.Constant(normalize),
            ],
            keywords=[],
        )
        return ast.copy_location(ast.Expr(record), node)


def rewrite_check(check: str, callee: str = "candidate") -> str | None:
    """``check`` with every assert on ``callee`` made a ``_record(...)`` call, or None when
    ``callee`` is used in any other way (its result stored, passed on, or asserted in a form
    `match_assert` does not know). Assert messages go: they are only evaluated on failure."""
    tree = _Recorder(callee).visit(ast.parse(check))
    if _mentions(tree, callee):
        return None
    return ast.unparse(ast.fix_missing_locations(tree))


def _literal(node: ast.expr, test: str, what: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise CheckError(f"test {test!r}: {what} {ast.unparse(node)!r} is not a literal") from None


def calls_from_asserts(tests: Sequence[str]) -> tuple[str, list[dict]]:
    """(entry point, calls) of asserts over literals, e.g. ``["assert f(1) == 2", ...]``, parsed
    on the host: nothing is executed, and an assert of another shape is a `CheckError`."""
    entry_point, calls = None, []
    for test in tests:
        try:
            (statement,) = ast.parse(test).body
        except (SyntaxError, ValueError):
            raise CheckError(f"test {test!r}: not one Python statement") from None
        found = match_assert(statement.test, None) if isinstance(statement, ast.Assert) else None
        if found is None:
            raise CheckError(f"test {test!r}: not of the form `assert f(<literals>) == <literal>` "
                             f"(or `not f(...)`, `abs(f(...) - x) < tol`, `tuple(f(...)) == ...`)")
        compare, call, normalize, expected, tol = found
        if entry_point not in (None, call.func.id):
            raise CheckError(f"test {test!r}: calls {call.func.id}, the tests before it {entry_point}")
        entry_point = call.func.id
        try:
            record: dict[str, Any] = {"args": [encode(_literal(a, test, "argument")) for a in call.args], "compare": compare}
            if call.keywords:
                record["kwargs"] = {k.arg: encode(_literal(k.value, test, "argument")) for k in call.keywords}
            if expected is not None:
                record["expected"] = encode(_literal(expected, test, "expected value"))
        except Unsupported as e:
            raise CheckError(f"test {test!r}: a value of unsupported type ({e})") from None
        if tol is not None:
            record["tol"] = float(_literal(tol, test, "tolerance"))
        if normalize:
            record["normalize"] = normalize
        calls.append(record)
    if entry_point is None:
        raise CheckError("no tests")
    return entry_point, calls
