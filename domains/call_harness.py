"""The program a code verification runs in the sandbox: standard library only, sent as source.

A verification does not ask the candidate's process whether the answer is right. This harness
executes the candidate in a namespace of its own, calls its entry point once for each recorded
call (arguments only: the expected results never enter the sandbox) and writes what came back,
strictly encoded, as the last line of stdout. The host decodes that line and compares it with
the expected results itself (`domains.calls`).

So there is nothing in here worth attacking. A candidate may replace builtins, patch this
module, read its own source or print a line of its own: whatever reaches the host is a list of
plain values, and it is accepted only if it equals results the candidate never saw. An object
that lies about equality cannot even be encoded: `encode` accepts exact builtin types only
(``type(x) is int``, never a subclass) and never calls a method of the value.

The same module records a HumanEval check's calls (`record_check`), and for a check that is not
a list of asserts records its arguments (`record_arguments`) and replays it on results that the
candidate returned in another process (`replay_check`). The host imports `encode` and `decode`
from here, so the encoding has one definition.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Callable
from typing import Any

# Starts the line that carries the results; the host reads the last such line of stdout.
RESULTS_PREFIX = "distillery-results:"
MAX_DEPTH = 64  # deeper values (or a list that contains itself) are refused, not recursed into

_write = os.write  # bound at import: the candidate runs later and may replace os.write


class Unsupported(TypeError):
    """A value that the strict encoding refuses: not an exact builtin type, or nested too deep."""


def encode(value: Any, depth: int = 0) -> list:
    """``value`` as JSON-ready tagged lists, e.g. ``["tuple", [["int", "1"], ["str", "a"]]]``.

    Ints travel as decimal strings (exact at any size) and floats as their repr (nan and inf
    included). Raises `Unsupported` for any other type, subclasses of builtins included.
    """
    kind = type(value)
    if value is None:
        return ["none"]
    if kind is bool:
        return ["bool", value]
    if kind is int:
        return ["int", str(value)]
    if kind is float:
        return ["float", repr(value)]
    if kind is str:
        return ["str", value]
    if kind is bytes:
        return ["bytes", value.hex()]
    if depth >= MAX_DEPTH:
        raise Unsupported(f"nested deeper than {MAX_DEPTH}")
    if kind is list or kind is tuple or kind is set or kind is frozenset:
        return [kind.__name__, [encode(v, depth + 1) for v in value]]
    if kind is dict:
        return ["dict", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    raise Unsupported(f"{kind.__module__}.{kind.__qualname__}")


_SCALARS: dict[str, Callable[[Any], Any]] = {
    "bool": bool, "int": int, "float": float, "str": str, "bytes": bytes.fromhex,
}
_CONTAINERS: dict[str, Callable[[Any], Any]] = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def decode(data: list) -> Any:
    """The value `encode` made ``data`` from; raises ValueError on anything else."""
    if not isinstance(data, list) or not data or not isinstance(data[0], str):
        raise ValueError(f"not an encoded value: {data!r:.80}")
    tag = data[0]
    if tag == "none" and len(data) == 1:
        return None
    if len(data) != 2:
        raise ValueError(f"not an encoded value: {data!r:.80}")
    body = data[1]
    if tag in _SCALARS:
        if tag == "bool" and not isinstance(body, bool) or tag != "bool" and not isinstance(body, str):
            raise ValueError(f"bad {tag} payload: {body!r:.80}")
        return _SCALARS[tag](body)
    if tag in _CONTAINERS and isinstance(body, list):
        return _CONTAINERS[tag](decode(v) for v in body)
    if tag == "dict" and isinstance(body, list):
        return {decode(k): decode(v) for k, v in body}
    raise ValueError(f"not an encoded value: {data!r:.80}")


def _emit(payload: Any) -> None:
    """Write ``payload`` as the results line: a line of its own, whatever was printed before."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # the candidate may have replaced or closed them
            pass
    _write(1, ("\n" + RESULTS_PREFIX + json.dumps(payload) + "\n").encode())


def _load(source: str, entry_point: str, check: str | None = None) -> tuple[dict, Any]:
    """Execute ``source`` (and then ``check``) in a fresh namespace; returns it and the entry point."""
    # Not "__main__": a completion's demo block (`if __name__ == "__main__": ...`) stays unrun.
    namespace: dict[str, Any] = {"__name__": "candidate"}
    exec(compile(source, "<candidate>", "exec"), namespace)
    if check is not None:
        exec(compile(check, "<check>", "exec"), namespace)
    return namespace, namespace.get(entry_point)


def _run_check(namespace: dict, candidate: Any) -> None:
    # Seeded: some checks draw their inputs from the global generator, and a task's calls must
    # come out the same on every load and on every replay.
    random.seed(0)
    namespace["check"](candidate)


def _encoded_call(args: tuple, kwargs: dict) -> dict[str, Any]:
    call: dict[str, Any] = {"args": [encode(a) for a in args]}
    if kwargs:
        call["kwargs"] = {k: encode(v) for k, v in kwargs.items()}
    return call


def call_entry_point(source: str, entry_point: str, calls: list[dict]) -> None:
    """Execute ``source``, call ``entry_point`` with each call's ``args``/``kwargs`` (encoded) and
    emit one outcome per call: ``["ok", <encoded result>]``, ``["raised"]`` or ``["unsupported"]``;
    or ``{"missing": <entry point>}`` when the source defines no such function."""
    _, function = _load(source, entry_point)
    if not callable(function):
        _emit({"missing": entry_point})
        return
    outcomes = []
    for call in calls:
        # Decoded afresh for every call: a candidate that mutates its arguments changes only its own copy.
        args = [decode(a) for a in call["args"]]
        kwargs = {k: decode(v) for k, v in call.get("kwargs", {}).items()}
        try:
            value = function(*args, **kwargs)
        except MemoryError:  # left to the launcher, which reports it as out_of_memory
            raise
        except Exception:
            outcomes.append(["raised"])
            continue
        try:
            outcomes.append(["ok", encode(value)])
        except (Unsupported, RecursionError, ValueError):  # ValueError: an int too long for str()
            outcomes.append(["unsupported"])
    _emit(outcomes)


def record_check(source: str, check: str, entry_point: str) -> None:
    """Run a rewritten HumanEval ``check`` (its asserts on the candidate became ``_record(...)``
    calls) with the reference solution in ``source`` and emit what it recorded."""
    recorded: list[dict] = []

    def _record(compare: str, args: tuple, kwargs: dict, expected: Any, tol: Any, normalize: str | None) -> None:
        call = {**_encoded_call(args, kwargs), "compare": compare}
        if compare in ("eq", "close"):
            call["expected"] = encode(expected)
        if compare == "close":
            call["tol"] = float(tol)
        if normalize:
            call["normalize"] = normalize
        recorded.append(call)

    namespace, function = _load(source, entry_point, check)
    namespace["_record"] = _record
    _run_check(namespace, function)
    _emit(recorded)


def record_arguments(source: str, check: str, entry_point: str) -> None:
    """For a check that is not a list of asserts (a property of the result, say): run it with the
    reference solution in ``source`` and emit the arguments of each call it makes, in order."""
    namespace, function = _load(source, entry_point, check)
    calls: list[dict] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(_encoded_call(args, kwargs))
        return function(*args, **kwargs)

    _run_check(namespace, recording)
    _emit(calls)


class ReplayMismatch(RuntimeError):
    """The check asked for a call other than the recorded one: its replay proves nothing."""


def replay_check(source: str, check: str, entry_point: str, calls: list[dict], results: list) -> None:
    """Run the check against results the candidate returned in another process: ``source`` is the
    reference solution (the prompt's helpers need it), the candidate's code is not here at all.
    Each call the check makes is answered with the next recorded result, decoded to plain values,
    after checking that its arguments are the recorded ones. Emits "pass" if the check ends."""
    namespace, _ = _load(source, entry_point, check)
    answers = iter(zip(calls, results))

    def replayed(*args: Any, **kwargs: Any) -> Any:
        call, result = next(answers, (None, None))
        asked = _encoded_call(args, kwargs)
        if call is None or asked != {k: call[k] for k in ("args", "kwargs") if k in call}:
            raise ReplayMismatch(f"call {asked} was not recorded")
        return decode(result)

    _run_check(namespace, replayed)
    _emit("pass")
