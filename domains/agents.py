"""Tool-use tasks on small simulated environments: a key-value store, a shop inventory, a calendar.

Every task needs two to four calls. In many, what to do depends on what a lookup returns: the
value to copy ("Copy x into y", "Swap x and y"), a comparison ("If x is above 40, delete it;
otherwise set it to 3", "Set z to the larger of x and y") or the free slot a calendar leaves
("Book the earliest free slot on tue from 9 on"). The verifier judges the effect, not the
words: it replays the completion's calls on a fresh environment built from the task's initial
state and requires the final state to equal the expected one exactly, and the lookups the
decision rests on to come before the first change ("unread_value" otherwise: the prompt does not
show the state, so acting without looking is a guess, and RL must not reinforce lucky guesses).

Tools (arguments are exact; JSON ints for numbers); lookups marked *:
  kv:       set {key: str, value: int}, get* {key: str}, delete {key: str}
  shop:     add_stock {item: str, qty: int}, remove_stock {item: str, qty: int}, check* {item: str}
  calendar: book {day: str, slot: int}, cancel {day: str, slot: int}, bookings* {day: str}

A user's tasks come as JSONL in the same spec (format ``agents``), one task a line::

    {"instruction": "Copy a into b.", "env": "kv", "initial_state": {"a": 4},
     "calls": [{"tool": "get", "args": {"key": "a"}}, {"tool": "set", "args": {"key": "b", "value": 4}}]}

The reference calls are replayed to give the expected state (an ``expected_state`` given beside
them must agree) and the reference trace; the lookups among them must come before the first change.
An optional ``reasoning`` list gives the thought written before each call (domains/base.py:
thinking while using tools); without it each call gets its environment's one-line thought.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from domains.base import MARKERS, OK, BadCall, SimEnv, SourceError, ToolError, Verdict, call_json, fail, make_task, replay, split_calls, trace


class KVEnv(SimEnv):
    """A key-value store of ints. State: {key: value}."""

    TOOLS = {"set": {"key": str, "value": int}, "get": {"key": str}, "delete": {"key": str}}
    LOOKUPS = {"get"}
    THOUGHTS = {"set": "{key} = {value}", "get": "read {key}", "delete": "drop {key}"}

    def __init__(self, state: dict) -> None:
        self.data = dict(state)

    def state(self) -> dict:
        return dict(sorted(self.data.items()))

    def _set(self, key: str, value: int) -> str:
        self.data[key] = value
        return "ok"

    def _get(self, key: str) -> str:
        if key not in self.data:
            raise ToolError(f"no key {key!r}")
        return str(self.data[key])

    def _delete(self, key: str) -> str:
        if self.data.pop(key, None) is None:
            raise ToolError(f"no key {key!r}")
        return "ok"


class ShopEnv(SimEnv):
    """Stock counts per item. State: {item: qty}, items with no stock left out."""

    TOOLS = {"add_stock": {"item": str, "qty": int}, "remove_stock": {"item": str, "qty": int}, "check": {"item": str}}
    LOOKUPS = {"check"}
    THOUGHTS = {"add_stock": "{item} +{qty}", "remove_stock": "{item} -{qty}", "check": "count {item}"}

    def __init__(self, state: dict) -> None:
        self.stock = dict(state)

    def state(self) -> dict:
        return {k: v for k, v in sorted(self.stock.items()) if v}

    def _add_stock(self, item: str, qty: int) -> str:
        if qty <= 0:
            raise ToolError("qty must be positive")
        self.stock[item] = self.stock.get(item, 0) + qty
        return f"{item}: {self.stock[item]}"

    def _remove_stock(self, item: str, qty: int) -> str:
        have = self.stock.get(item, 0)
        if qty <= 0:
            raise ToolError("qty must be positive")
        if qty > have:
            raise ToolError(f"only {have} {item} in stock")
        self.stock[item] = have - qty
        return f"{item}: {self.stock[item]}"

    def _check(self, item: str) -> str:
        return str(self.stock.get(item, 0))


_DAYS = ["mon", "tue", "wed", "thu", "fri"]
_SLOTS = range(9, 18)


class CalendarEnv(SimEnv):
    """Bookable hour slots 9..17 on weekdays. State: {day: [slots]}, days without bookings left out."""

    TOOLS = {"book": {"day": str, "slot": int}, "cancel": {"day": str, "slot": int}, "bookings": {"day": str}}
    LOOKUPS = {"bookings"}
    THOUGHTS = {"book": "book {day} {slot}", "cancel": "free {day} {slot}", "bookings": "see {day}"}

    def __init__(self, state: dict) -> None:
        self.booked = {(day, slot) for day, slots in state.items() for slot in slots}

    def state(self) -> dict:
        out: dict[str, list[int]] = {}
        for day, slot in sorted(self.booked, key=lambda b: (_DAYS.index(b[0]), b[1])):
            out.setdefault(day, []).append(slot)
        return out

    def _book(self, day: str, slot: int) -> str:
        if day not in _DAYS or slot not in _SLOTS:
            raise ToolError(f"no slot {day} {slot}; days {'/'.join(_DAYS)}, slots 9-17")
        if (day, slot) in self.booked:
            raise ToolError(f"{day} {slot} is taken")
        self.booked.add((day, slot))
        return "ok"

    def _cancel(self, day: str, slot: int) -> str:
        if (day, slot) not in self.booked:
            raise ToolError(f"{day} {slot} is not booked")
        self.booked.remove((day, slot))
        return "ok"

    def _bookings(self, day: str) -> str:
        if day not in _DAYS:
            raise ToolError(f"no day {day}; days {'/'.join(_DAYS)}")
        return ", ".join(str(s) for d, s in sorted(self.booked) if d == day) or "none"


ENVS: dict[str, type[KVEnv | ShopEnv | CalendarEnv]] = {"kv": KVEnv, "shop": ShopEnv, "calendar": CalendarEnv}

_KEYS = list("abcdemnpqrstuvwxyz")
_ITEMS = ["apple", "pear", "lemon", "plum", "egg", "cup", "pen", "box"]

# A generator returns (env kind, initial state, instruction, reference calls).
_Gen = Callable[[random.Random], tuple[str, dict, str, list[str]]]


def _plural(item: str, qty: int) -> str:
    if qty == 1:
        return item
    return item + ("es" if item.endswith("x") else "s")


def _kv_state(r: random.Random, keys: list[str]) -> dict:
    return {k: r.randint(0, 99) for k in keys}


def _kv_set2(r: random.Random) -> tuple[str, dict, str, list[str]]:
    k1, k2, *rest = r.sample(_KEYS, 4)
    v1, v2 = r.randint(0, 99), r.randint(0, 99)
    state = _kv_state(r, r.sample([k1, *rest], r.randint(0, 2)))
    calls = [call_json("set", key=k1, value=v1), call_json("set", key=k2, value=v2)]
    return "kv", state, f"Set {k1} to {v1} and {k2} to {v2}.", calls


def _kv_set_delete(r: random.Random) -> tuple[str, dict, str, list[str]]:
    k1, k2, k3 = r.sample(_KEYS, 3)
    v1 = r.randint(0, 99)
    state = _kv_state(r, [k2, k3][: r.randint(1, 2)])
    calls = [call_json("set", key=k1, value=v1), call_json("delete", key=k2)]
    return "kv", state, f"Set {k1} to {v1}, then delete {k2}.", calls


def _kv_copy(r: random.Random) -> tuple[str, dict, str, list[str]]:
    k1, k2, k3 = r.sample(_KEYS, 3)
    state = _kv_state(r, [k1, k2, k3][: r.randint(1, 3)])
    calls = [call_json("get", key=k1), call_json("set", key=k2, value=state[k1])]
    return "kv", state, f"Copy {k1} into {k2}.", calls


def _kv_delete2(r: random.Random) -> tuple[str, dict, str, list[str]]:
    keys = r.sample(_KEYS, r.randint(2, 4))
    state = _kv_state(r, keys)
    k1, k2 = keys[:2]
    return "kv", state, f"Delete {k1} and {k2}.", [call_json("delete", key=k1), call_json("delete", key=k2)]


def _shop_state(r: random.Random, items: list[str]) -> dict:
    return {i: r.randint(1, 9) for i in items}


def _shop_add_remove(r: random.Random) -> tuple[str, dict, str, list[str]]:
    i1, i2, *rest = r.sample(_ITEMS, 4)
    state = _shop_state(r, [i2, *rest[: r.randint(0, 2)]])
    q1, q2 = r.randint(1, 9), r.randint(1, state[i2])
    calls = [call_json("add_stock", item=i1, qty=q1), call_json("remove_stock", item=i2, qty=q2)]
    return "shop", state, f"Add {q1} {_plural(i1, q1)}, then remove {q2} {_plural(i2, q2)}.", calls


def _shop_add2(r: random.Random) -> tuple[str, dict, str, list[str]]:
    i1, i2, i3 = r.sample(_ITEMS, 3)
    state = _shop_state(r, r.sample([i1, i2, i3], r.randint(0, 2)))
    q1, q2 = r.randint(1, 9), r.randint(1, 9)
    calls = [call_json("add_stock", item=i1, qty=q1), call_json("add_stock", item=i2, qty=q2)]
    return "shop", state, f"Add {q1} {_plural(i1, q1)} and {q2} {_plural(i2, q2)}.", calls


def _shop_match(r: random.Random) -> tuple[str, dict, str, list[str]]:
    i1, i2, i3 = r.sample(_ITEMS, 3)
    state = _shop_state(r, [i1, *r.sample([i2, i3], r.randint(0, 2))])
    calls = [call_json("check", item=i1), call_json("add_stock", item=i2, qty=state[i1])]
    return "shop", state, f"Add as many {_plural(i2, 2)} as there are {_plural(i1, 2)}.", calls


def _shop_clear(r: random.Random) -> tuple[str, dict, str, list[str]]:
    items = r.sample(_ITEMS, r.randint(1, 3))
    state = _shop_state(r, items)
    i1 = items[0]
    calls = [call_json("check", item=i1), call_json("remove_stock", item=i1, qty=state[i1])]
    return "shop", state, f"Remove all {_plural(i1, 2)}.", calls


def _cal_of(bookings: list[tuple[str, int]]) -> dict:
    state: dict[str, list[int]] = {}
    for day, slot in bookings:
        state.setdefault(day, []).append(slot)
    return CalendarEnv(state).state()  # canonical order


def _slots(r: random.Random, n: int) -> list[tuple[str, int]]:
    return r.sample([(d, s) for d in _DAYS for s in _SLOTS], n)


def _cal_book2(r: random.Random) -> tuple[str, dict, str, list[str]]:
    (d1, s1), (d2, s2), *other = _slots(r, 4)
    state = _cal_of(other[: r.randint(0, 2)])
    calls = [call_json("book", day=d1, slot=s1), call_json("book", day=d2, slot=s2)]
    return "calendar", state, f"Book {d1} at {s1} and {d2} at {s2}.", calls


def _cal_move(r: random.Random) -> tuple[str, dict, str, list[str]]:
    (d1, s1), (d2, s2), *other = _slots(r, 4)
    state = _cal_of([(d1, s1), *other[: r.randint(0, 2)]])
    calls = [call_json("cancel", day=d1, slot=s1), call_json("book", day=d2, slot=s2)]
    return "calendar", state, f"Move the {d1} {s1} booking to {d2} at {s2}.", calls


def _cal_cancel2(r: random.Random) -> tuple[str, dict, str, list[str]]:
    bookings = _slots(r, r.randint(2, 4))
    (d1, s1), (d2, s2) = bookings[:2]
    calls = [call_json("cancel", day=d1, slot=s1), call_json("cancel", day=d2, slot=s2)]
    return "calendar", _cal_of(bookings), f"Cancel {d1} at {s1} and {d2} at {s2}.", calls


def _kv_set3(r: random.Random) -> tuple[str, dict, str, list[str]]:
    k1, k2, k3, *rest = r.sample(_KEYS, 5)
    v1, v2, v3 = (r.randint(0, 99) for _ in range(3))
    state = _kv_state(r, r.sample([k1, *rest], r.randint(0, 2)))
    calls = [call_json("set", key=k1, value=v1), call_json("set", key=k2, value=v2), call_json("set", key=k3, value=v3)]
    return "kv", state, f"Set {k1} to {v1}, {k2} to {v2} and {k3} to {v3}.", calls


def _kv_move(r: random.Random) -> tuple[str, dict, str, list[str]]:
    k1, k2, k3 = r.sample(_KEYS, 3)
    state = _kv_state(r, [k1, k2, k3][: r.randint(1, 3)])
    calls = [call_json("get", key=k1), call_json("set", key=k2, value=state[k1]), call_json("delete", key=k1)]
    return "kv", state, f"Move {k1} to {k2}.", calls


def _shop_replace(r: random.Random) -> tuple[str, dict, str, list[str]]:
    i1, i2, i3 = r.sample(_ITEMS, 3)
    state = _shop_state(r, [i1, *r.sample([i2, i3], r.randint(0, 2))])
    calls = [call_json("check", item=i1), call_json("remove_stock", item=i1, qty=state[i1]), call_json("add_stock", item=i2, qty=state[i1])]
    return "shop", state, f"Replace all {_plural(i1, 2)} with as many {_plural(i2, 2)}.", calls


def _cal_book3(r: random.Random) -> tuple[str, dict, str, list[str]]:
    (d1, s1), (d2, s2), (d3, s3), *other = _slots(r, 5)
    state = _cal_of(other[: r.randint(0, 2)])
    calls = [call_json("book", day=d1, slot=s1), call_json("book", day=d2, slot=s2), call_json("book", day=d3, slot=s3)]
    return "calendar", state, f"Book {d1} at {s1}, {d2} at {s2} and {d3} at {s3}.", calls


# Lookups that decide the calls: a comparison, a swap, a free slot; or two moves at once.


def _kv_if_above(r: random.Random) -> tuple[str, dict, str, list[str]]:
    k, *rest = r.sample(_KEYS, 3)
    state = _kv_state(r, [k, *rest[: r.randint(0, 2)]])
    t = r.randint(10, 89)
    v = r.choice([x for x in range(100) if x != state[k]])
    act = call_json("delete", key=k) if state[k] > t else call_json("set", key=k, value=v)
    return "kv", state, f"If {k} is above {t}, delete it; otherwise set it to {v}.", [call_json("get", key=k), act]


def _kv_swap(r: random.Random) -> tuple[str, dict, str, list[str]]:
    k1, k2, k3 = r.sample(_KEYS, 3)
    v1, v2 = r.sample(range(100), 2)
    state = {**_kv_state(r, [k3][: r.randint(0, 1)]), k1: v1, k2: v2}
    calls = [call_json("get", key=k1), call_json("get", key=k2), call_json("set", key=k1, value=v2), call_json("set", key=k2, value=v1)]
    return "kv", state, f"Swap {k1} and {k2}.", calls


def _kv_larger(r: random.Random) -> tuple[str, dict, str, list[str]]:
    k1, k2, k3 = r.sample(_KEYS, 3)
    v1, v2 = r.sample(range(100), 2)
    state = {**_kv_state(r, [k3][: r.randint(0, 1)]), k1: v1, k2: v2}
    calls = [call_json("get", key=k1), call_json("get", key=k2), call_json("set", key=k3, value=max(v1, v2))]
    return "kv", state, f"Set {k3} to the larger of {k1} and {k2}.", calls


def _shop_if_fewer(r: random.Random) -> tuple[str, dict, str, list[str]]:
    i, *rest = r.sample(_ITEMS, 3)
    state = _shop_state(r, [i, *rest[: r.randint(0, 2)]] if r.random() < 0.85 else rest[:1])
    t = r.randint(2, 9)
    q = r.randint(1, t)
    have = state.get(i, 0)
    act = call_json("add_stock", item=i, qty=q) if have < t else call_json("remove_stock", item=i, qty=q)
    instruction = f"If there are fewer than {t} {_plural(i, 2)}, add {q}; otherwise remove {q}."
    return "shop", state, instruction, [call_json("check", item=i), act]


def _shop_remove_more(r: random.Random) -> tuple[str, dict, str, list[str]]:
    i1, i2, i3 = r.sample(_ITEMS, 3)
    q1, q2 = r.sample(range(1, 10), 2)
    q = r.randint(1, min(3, max(q1, q2)))
    state = {**_shop_state(r, [i3][: r.randint(0, 1)]), i1: q1, i2: q2}
    calls = [call_json("check", item=i1), call_json("check", item=i2), call_json("remove_stock", item=i1 if q1 > q2 else i2, qty=q)]
    return "shop", state, f"Remove {q} of the {_plural(i1, 2)} or the {_plural(i2, 2)}, whichever there are more of.", calls


def _cal_first_free(r: random.Random) -> tuple[str, dict, str, list[str]]:
    d, d2 = r.sample(_DAYS, 2)
    h = r.randint(9, 15)
    run = r.randint(0, min(3, 17 - h))  # the first `run` slots from h on are taken; a few others may be too
    others = [s for s in _SLOTS if s != h + run and not h <= s < h + run]
    taken = [(d, s) for s in range(h, h + run)] + [(d, s) for s in r.sample(others, r.randint(0, 2))]
    s2 = r.choice(_SLOTS)
    state = _cal_of([*taken, (d2, s2)])
    calls = [call_json("bookings", day=d), call_json("book", day=d, slot=h + run), call_json("cancel", day=d2, slot=s2)]
    return "calendar", state, f"Book the earliest free slot on {d} from {h} on, then cancel {d2} {s2}.", calls


def _cal_move2(r: random.Random) -> tuple[str, dict, str, list[str]]:
    (d1, s1), (d2, s2), (d3, s3), (d4, s4), *other = _slots(r, 6)
    state = _cal_of([(d1, s1), (d3, s3), *other[: r.randint(0, 2)]])
    calls = [call_json("cancel", day=d1, slot=s1), call_json("book", day=d2, slot=s2),
             call_json("cancel", day=d3, slot=s3), call_json("book", day=d4, slot=s4)]
    return "calendar", state, f"Move {d1} {s1} to {d2} {s2} and {d3} {s3} to {d4} {s4}.", calls


_GENERATORS: list[_Gen] = [
    _kv_set2, _kv_set_delete, _kv_copy, _kv_delete2,
    _shop_add_remove, _shop_add2, _shop_match, _shop_clear,
    _cal_book2, _cal_move, _cal_cancel2,
    # Three calls; in a move or a replace the later two depend on what the first returned.
    _kv_set3, _kv_move, _shop_replace, _cal_book3,
    _kv_if_above, _kv_swap, _kv_larger, _shop_if_fewer, _shop_remove_more, _cal_first_free, _cal_move2,
]


def solve(kind: str, state: dict, calls: list[str], thoughts: list[str] | None = None) -> tuple[str, dict]:
    """The reference completion of a drafted task (its calls after their reasoning, and their real
    results) and the verifier's meta: environment, initial and expected state, and the lookups the calls rest on."""
    env = ENVS[kind](state)
    completion = f" {trace(env, calls, thoughts)} Done."
    lookups = [c for c in calls if json.loads(c)["tool"] in env.LOOKUPS]
    return completion, {"env": kind, "initial_state": state, "expected_state": env.state(), "lookups": lookups}


def _env(meta: dict) -> KVEnv | ShopEnv | CalendarEnv:
    return ENVS[meta["env"]](meta["initial_state"])


def _looked_up_first(meta: dict, calls: list[str]) -> bool:
    """Whether every lookup in ``meta["lookups"]`` is among the calls made before the state first changed."""
    env = _env(meta)
    start = env.state()
    made = []
    for call_text in calls:  # well-formed: replay has checked them
        env.invoke(call_text)
        if env.state() != start:
            break
        made.append(json.loads(call_text))
    return all(json.loads(c) in made for c in meta.get("lookups", []))


class AgentsDomain:
    name = "agents"

    def format_row(self, fmt: str, record: dict[str, Any]) -> tuple[str, str, dict]:
        """An `agents` JSONL task (domains/formats.py): the reference calls are run on the initial state
        to give the expected state; a call the environment refuses or cannot parse is an error naming it."""
        kind, state, instruction, calls = record["env"], record["initial_state"], record["instruction"], record["calls"]
        if kind not in ENVS:
            raise SourceError(f"env {kind!r} is not one of {', '.join(ENVS)}")
        if not isinstance(instruction, str) or not instruction.strip():
            raise SourceError(f"instruction is {instruction!r}, not text")
        if not isinstance(state, dict):
            raise SourceError(f"initial_state is {type(state).__name__}, not an object")
        if not isinstance(calls, list) or not calls:
            raise SourceError("calls: a task needs at least one reference call")
        texts = [c if isinstance(c, str) else json.dumps(c) for c in calls]
        env = ENVS[kind](state)
        for i, text in enumerate(texts):
            try:
                answer = env.invoke(text)
            except BadCall as e:
                raise SourceError(f"calls[{i}] {text}: {e}") from None
            if answer.startswith("error:"):
                raise SourceError(f"calls[{i}] {text}: the {kind} environment refuses it ({answer})")
        thoughts = record.get("reasoning")
        if thoughts is not None and (not isinstance(thoughts, list) or len(thoughts) != len(calls) or not all(isinstance(t, str) for t in thoughts)):
            raise SourceError(f"reasoning: expected a list of {len(calls)} strings, one before each call; got {thoughts!r}")
        if thoughts is not None and (bad := next((t for t in thoughts if any(m in t for m in MARKERS)), None)) is not None:
            raise SourceError(f"reasoning {bad!r}: a marker ({', '.join(MARKERS)}) inside reasoning would change the trace")
        completion, meta = solve(kind, state, texts, thoughts)
        if "expected_state" in record and record["expected_state"] != meta["expected_state"]:
            raise SourceError(f"expected_state {record['expected_state']} differs from the state the calls leave, {meta['expected_state']}")
        return f"Q: {instruction}\nA:", completion, meta

    def make_tasks(self, n: int, seed: int) -> list[dict]:
        r = random.Random(seed)
        tasks = []
        for i in range(n):
            kind, state, instruction, calls = r.choice(_GENERATORS)(r)
            completion, meta = solve(kind, state, calls)
            tasks.append(make_task(self.name, seed, i, f"Q: {instruction}\nA:", completion, meta))
        return tasks

    def verify(self, task: dict, completion: str) -> Verdict:
        """Replay the calls on a fresh env; "no_tool_call", "bad_tool_call", "wrong_state",
        "unread_value" (a lookup the task rests on is missing before the first change) or ok."""
        meta = json.loads(task["meta"])
        env = _env(meta)
        bad = replay(env, completion)
        if bad is not None:
            return bad
        if env.state() != meta["expected_state"]:
            return fail("wrong_state")
        return OK if _looked_up_first(meta, split_calls(completion)) else fail("unread_value")

    def environment(self, task: dict) -> KVEnv | ShopEnv | CalendarEnv:
        return _env(json.loads(task["meta"]))
