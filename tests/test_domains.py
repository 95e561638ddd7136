"""Task domains: reference completions verify, generation is deterministic, near misses are
rejected for the right reason, and the sandbox enforces its limits."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from domains import DOMAINS, get_domain
from domains import agents as agents_module
from domains import code as code_module
from domains.agents import AgentsDomain
from domains.base import CALL_CLOSE, CALL_OPEN, RESULT_CLOSE, RESULT_OPEN, THINK_CLOSE, THINK_OPEN, call_json, make_task, split_calls, without_thoughts
from domains.call_harness import decode, encode
from domains.calls import calls_from_asserts, judge
from domains.code import CodeDomain
from domains.math import MathDomain
from domains.sandbox import OUTPUT_BYTES, run_sandboxed
from domains.search import BM25, SearchDomain, SearchEnv

NAMES = ["math", "code", "agents", "search"]


@pytest.fixture(scope="module")
def tasks() -> dict[str, list[dict]]:
    return {name: get_domain(name).make_tasks(200, seed=0) for name in NAMES}


# --- every domain -----------------------------------------------------------------------------


def test_registry() -> None:
    assert sorted(DOMAINS) == sorted([*NAMES, "humaneval"])  # humaneval: tests/test_humaneval.py
    assert all(get_domain(n).name == n for n in NAMES)
    with pytest.raises(ValueError, match="nope") as e:
        get_domain("nope")
    assert "math" in str(e.value)


@pytest.mark.parametrize("name", NAMES)
def test_reference_completions_verify(name: str, tasks: dict[str, list[dict]]) -> None:
    domain = get_domain(name)
    with ThreadPoolExecutor(2) as pool:  # code verification runs subprocesses
        verdicts = list(pool.map(lambda t: domain.verify(t, t["completion"]), tasks[name]))
    failed = [(t["task_id"], v) for t, v in zip(tasks[name], verdicts) if not v.ok]
    assert not failed
    assert all(v.score == 1.0 and v.reason == "ok" for v in verdicts)


@pytest.mark.parametrize("name", NAMES)
def test_task_rows(name: str, tasks: dict[str, list[dict]]) -> None:
    rows = tasks[name]
    assert len({t["task_id"] for t in rows}) == len(rows)
    for t in rows:
        assert set(t) == {"task_id", "domain", "prompt", "completion", "meta"}
        assert all(isinstance(v, str) for v in t.values())
        assert t["domain"] == name
        assert t["prompt"].startswith("Q: ") and t["prompt"].endswith(("\nA:", "\nA:\n"))
        json.loads(t["meta"])
        limit = {"agents": 520, "search": 900, "code": 240}.get(name, 150)  # search: a follow-up holds the first exchange
        assert len(t["prompt"]) + len(t["completion"]) <= limit
    assert len({t["prompt"] for t in rows}) > 0.8 * len(rows)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_seed_dependent(name: str, tasks: dict[str, list[dict]]) -> None:
    domain = get_domain(name)
    assert domain.make_tasks(200, seed=0) == tasks[name]
    other = domain.make_tasks(200, seed=1)
    train = {t["prompt"] for t in tasks[name]}
    assert sum(t["prompt"] in train for t in other) < 0.3 * len(other)


@pytest.mark.parametrize("name", ["agents", "search"])
def test_tool_traces(name: str, tasks: dict[str, list[dict]]) -> None:
    """Reference results are exactly what a fresh environment answers, call by call."""
    domain = get_domain(name)
    for t in tasks[name]:
        env = domain.environment(t)
        calls = split_calls(t["completion"])
        assert len(calls) >= (2 if name == "agents" else 1)
        expected = "".join(f"{CALL_OPEN}{c}{CALL_CLOSE}{RESULT_OPEN}{env.call(c)}{RESULT_CLOSE}" for c in calls)
        assert expected in without_thoughts(t["completion"])
        assert "error" not in expected
        # Thinking while using tools: one short thought right before each call.
        assert t["completion"].count(THINK_OPEN) == t["completion"].count(f"{THINK_CLOSE}{CALL_OPEN}") == len(calls)


def test_math_and_code_have_no_environment(tasks: dict[str, list[dict]]) -> None:
    assert get_domain("math").environment(tasks["math"][0]) is None
    assert get_domain("code").environment(tasks["code"][0]) is None


def test_split_calls_ignores_result_text() -> None:
    text = ' <call>{"a": 1}</call><result><call>{"fake": 1}</call></result><call> {"b": 2} </call> Done.'
    assert split_calls(text) == ['{"a": 1}', '{"b": 2}']


# --- math -------------------------------------------------------------------------------------

MATH_TASK = {"task_id": "t", "domain": "math", "prompt": "", "completion": "", "meta": json.dumps({"answer": "14"})}


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        (" 12+7=19, 19-5=14. Answer: 14", "ok"),
        (" Answer: 14.0", "ok"),
        (" Answer: 14.00", "ok"),
        (" Answer: 28/2", "ok"),
        (" Answer: 14 pens", "ok"),
        (" Answer: 3\n Answer: 14", "ok"),
        (" 12+7=19, 19-5=14. Answer: 19", "wrong_answer"),
        (" 12+7=19, 19-5=14.", "no_answer"),
        (" Answer: 14\n Answer: 15", "wrong_answer"),
        (" Answer: fourteen", "no_answer"),
        (" Answer: 14 or 15", "ambiguous_answer"),
        (" Answer: 14/0", "wrong_answer"),
        (" Answer: 14.5", "wrong_answer"),
        # The right answer after a false step is a lucky guess, not a solution.
        (" 12+7=20, 20-5=14. Answer: 14", "false_step"),
        (" 12+7=19, 19-5=15. Answer: 14", "false_step"),
        (" 12 + 7 = 19, 19 - 5 = 14. Answer: 14", "ok"),
        (" 2+3*4=14, 14/1=14. Answer: 14", "ok"),
        (" 2+3*4=20, 20-6=14. Answer: 14", "false_step"),
        (" 7/2=3.5, 3.5*4=14. Answer: 14", "ok"),
        (" 7/2=3, 3+11=14. Answer: 14", "false_step"),
        (" 14/3=4.67, 14/1=14. Answer: 14", "ok"),
        (" 14/3=4.68, 14/1=14. Answer: 14", "false_step"),
        (" 5/0=14. Answer: 14", "false_step"),
        (" 6-20=-14, 0-6+20=14. Answer: 14", "ok"),
    ],
)
def test_math_verdicts(completion: str, reason: str) -> None:
    v = MathDomain().verify(MATH_TASK, completion)
    assert (v.ok, v.reason) == (reason == "ok", reason)


# --- code -------------------------------------------------------------------------------------

CODE_TASK = {
    "task_id": "t",
    "domain": "code",
    "prompt": "",
    "completion": "",
    "meta": json.dumps({"tests": ["assert f(2) == 9", "assert f(0) == 7", "assert f(10) == 17", "assert f(-7) == 0"]}),
}


# A branch template (x times 3 if x > 5, else x plus 5): tests sit at the threshold.
BRANCH_TASK = {**CODE_TASK, "meta": json.dumps({"tests": ["assert f(5) == 10", "assert f(6) == 18", "assert f(2) == 7", "assert f(8) == 24"]})}


@pytest.mark.parametrize(
    ("task", "completion", "reason"),
    [
        (CODE_TASK, "def f(x):\n    return x + 7\n", "ok"),
        (CODE_TASK, "def f(x):\n    return x +\n", "syntax_error"),
        (CODE_TASK, "def f(x):\n    return x + 7 if x < 5 else x\n", "wrong_answer"),
        (CODE_TASK, "def f(x):\n    return 1 / 0\n", "runtime_error"),
        (CODE_TASK, "def g(x):\n    return x + 7\n", "no_entry_point"),
        (CODE_TASK, "import sys\nsys.exit(0)\n", "no_result"),
        (CODE_TASK, "import os\nos._exit(0)\n", "no_result"),
        (CODE_TASK, 'x = """\n', "syntax_error"),
        (CODE_TASK, "import sys\nsys.exit(2)\n", "crash"),
        (CODE_TASK, "def f(x):\n    return bytearray(2 * 1024**3)\n", "out_of_memory"),
        (CODE_TASK, "import socket\nsocket.create_connection(('127.0.0.1', 80))\n", "forbidden"),
        (BRANCH_TASK, "def f(x):\n    return x * 3 if x > 5 else x + 5\n", "ok"),
        (BRANCH_TASK, "def f(x):\n    return x * 3 if x >= 5 else x + 5\n", "wrong_answer"),
        (BRANCH_TASK, "def f(x):\n    return x + 5 if x > 5 else x * 3\n", "wrong_answer"),
        (BRANCH_TASK, "def f(x):\n    return x * 3 if x > 5 else x\n", "wrong_answer"),
    ],
)
def test_code_verdicts(task: dict, completion: str, reason: str) -> None:
    v = CodeDomain(timeout_s=2.0).verify(task, completion)
    assert (v.ok, v.reason) == (reason == "ok", reason)


@pytest.mark.parametrize("template", code_module._TEMPLATES + code_module._COMPOSED, ids=lambda t: t.spec)
def test_code_every_template_checks_its_reference(template: code_module._Template) -> None:
    """Each template's tests, computed by its independent oracle, pass its reference body and
    tell apart at least two outputs (a constant function cannot pass). Twenty draws are judged
    with the reference run here (it is our code), the first also through the sandbox."""
    for seed in range(20):
        _, source, tests = code_module._make(random.Random(seed), template)
        assert len(tests) == code_module._N_TESTS
        assert len({t.split(" == ")[1] for t in tests}) >= 2, tests
        entry_point, calls = calls_from_asserts(tests)
        namespace: dict = {}
        exec(source, namespace)
        for call in calls:
            result = namespace[entry_point](*map(decode, call["args"]))
            assert judge(["ok", encode(result)], call) is None, (source, tests)
        if seed == 0:
            task = {**CODE_TASK, "meta": json.dumps({"tests": tests})}
            assert CodeDomain(timeout_s=10.0).verify(task, source).ok, (source, tests)


def test_a_candidate_that_draws_a_syntax_warning_fails_quietly() -> None:
    """In a process of its own: pytest restores the warning filters that imports during collection add."""
    program = (
        f"from domains.code import CodeDomain\ntask = {CODE_TASK!r}\n"
        "print(CodeDomain(timeout_s=2.0).verify(task, 'def f(x):\\n    return 1[0]\\n').reason)\n"
        "compile('def f(x):\\n    return 1[0]\\n', '<elsewhere>', 'exec')  # the filter is on the candidate's file name only\n"
    )
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", program], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True)
    assert proc.stdout.strip() == "runtime_error", proc.stderr
    assert proc.stderr.count("SyntaxWarning") == 1 and "<elsewhere>" in proc.stderr, proc.stderr


def test_code_infinite_loop_times_out_within_limit() -> None:
    start = time.monotonic()
    v = CodeDomain(timeout_s=1.0).verify(CODE_TASK, "def f(x):\n    while True:\n        pass\n")
    assert v.reason == "timeout"
    assert time.monotonic() - start < 3.0


def test_sandbox_limits() -> None:
    r = run_sandboxed("import os\nprint(os.getcwd(), *sorted(os.environ))\n")
    cwd, *env = r.stdout.split()
    assert r.status == "ok" and "sandbox-" in cwd
    assert set(env) <= {"PATH", "TMPDIR", "LC_CTYPE"}  # Python sets LC_CTYPE itself (PEP 538 locale coercion)
    r = run_sandboxed("x = bytearray(2 * 1024**3)\n")
    assert r.status == "out_of_memory" and r.stderr.strip().endswith("MemoryError")
    assert run_sandboxed("import time\ntime.sleep(30)\n", timeout_s=0.5).status == "timeout"
    r = run_sandboxed("print('x' * 10**7)\n")  # read to the end, only the tail kept
    assert r.status == "ok" and len(r.stdout) == OUTPUT_BYTES
    r = run_sandboxed("import numpy\n")  # no site-packages
    assert r.status == "runtime_error" and "ModuleNotFoundError" in r.stderr


# --- agents -----------------------------------------------------------------------------------


def _call(tool: str, **args: object) -> str:
    return f"{CALL_OPEN}{json.dumps({'tool': tool, 'args': args})}{CALL_CLOSE}"


KV_TASK = {
    "task_id": "t",
    "domain": "agents",
    "prompt": "Q: Set x to 4 and y to 9.\nA:",
    "completion": "",
    "meta": json.dumps({"env": "kv", "initial_state": {"z": 1}, "expected_state": {"x": 4, "y": 9, "z": 1}}),
}


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        (_call("set", key="x", value=4) + _call("set", key="y", value=9) + " Done.", "ok"),
        # Results written by the model are ignored: only the replayed effect counts.
        (_call("set", key="x", value=4) + "<result>bogus</result>" + _call("set", key="y", value=9), "ok"),
        (_call("set", key="x", value=4) + _call("set", key="y", value=8), "wrong_state"),
        (_call("set", key="x", value=4) + " Done.", "wrong_state"),
        (_call("set", key="x", value=4) + _call("set", key="y", value=9) + _call("delete", key="z"), "wrong_state"),
        (_call("set", key="x", value=4) + _call("put", key="y", value=9), "bad_tool_call"),
        (_call("set", key="x", value=4) + '<call>{"tool": "set", "args": {"key": "y", "value": 9}</call>', "bad_tool_call"),
        (_call("set", key="x", value=4) + _call("set", key="y", value="9"), "bad_tool_call"),
        (_call("set", key="x", value=4) + _call("set", key="y"), "bad_tool_call"),
        (_call("set", key="x", value=4) + '<call>{"tool": "set", "args": {"key": "y", "value": 9}}', "bad_tool_call"),
        (" Done.", "no_tool_call"),
    ],
)
def test_agents_verdicts(completion: str, reason: str) -> None:
    v = AgentsDomain().verify(KV_TASK, completion)
    assert (v.ok, v.reason) == (reason == "ok", reason)


def _agents_task(env: str, initial: dict, expected: dict, lookups: list[str]) -> dict:
    meta = {"env": env, "initial_state": initial, "expected_state": expected, "lookups": lookups}
    return {"task_id": "t", "domain": "agents", "prompt": "", "completion": "", "meta": json.dumps(meta)}


GET_X = call_json("get", key="x")
# "If x is above 40, delete it; otherwise set it to 3", x = 40: the lookup decides the branch.
IF_TASK = _agents_task("kv", {"x": 40}, {"x": 3}, [GET_X])
# "Swap x and y", x = 5, y = 7.
SWAP_TASK = _agents_task("kv", {"x": 5, "y": 7}, {"x": 7, "y": 5}, [GET_X, call_json("get", key="y")])
# "Book the earliest free slot on tue from 9 on" (the cancel left out), tue 9, 10 and 12 taken.
FREE_TASK = _agents_task("calendar", {"tue": [9, 10, 12]}, {"tue": [9, 10, 11, 12]}, [call_json("bookings", day="tue")])


@pytest.mark.parametrize(
    ("task", "completion", "reason"),
    [
        (IF_TASK, _call("get", key="x") + _call("set", key="x", value=3) + " Done.", "ok"),
        (IF_TASK, _call("get", key="x") + _call("delete", key="x") + " Done.", "wrong_state"),  # 40 is not above 40
        # The right effect without the lookup is a guess (the prompt does not show x) ...
        (IF_TASK, _call("set", key="x", value=3) + " Done.", "unread_value"),
        # ... and so is a lookup made after acting.
        (IF_TASK, _call("set", key="x", value=3) + _call("get", key="x") + " Done.", "unread_value"),
        (SWAP_TASK, _call("get", key="x") + _call("get", key="y") + _call("set", key="x", value=7) + _call("set", key="y", value=5), "ok"),
        (SWAP_TASK, _call("get", key="x") + _call("get", key="y") + _call("set", key="x", value=7) + _call("set", key="y", value=7), "wrong_state"),
        (SWAP_TASK, _call("get", key="x") + _call("set", key="x", value=7) + _call("get", key="y") + _call("set", key="y", value=5), "unread_value"),
        (SWAP_TASK, _call("get", key="x") + _call("get", key="y") + _call("set", key="x", value=7), "wrong_state"),  # half a swap
        (FREE_TASK, _call("bookings", day="tue") + _call("book", day="tue", slot=11) + " Done.", "ok"),
        (FREE_TASK, _call("bookings", day="tue") + _call("book", day="tue", slot=13) + " Done.", "wrong_state"),
        (FREE_TASK, _call("bookings", day="mon") + _call("book", day="tue", slot=11) + " Done.", "unread_value"),  # the wrong day looked up
        (FREE_TASK, _call("bookings", day="tue") + _call("book", day="tue", slot=10) + _call("book", day="tue", slot=11), "ok"),  # a refused call changes nothing
    ],
)
def test_agents_lookup_verdicts(task: dict, completion: str, reason: str) -> None:
    v = AgentsDomain().verify(task, completion)
    assert (v.ok, v.reason) == (reason == "ok", reason)


@pytest.mark.parametrize("generator", agents_module._GENERATORS, ids=lambda g: g.__name__)
def test_agents_every_template_needs_its_lookups(generator: agents_module._Gen) -> None:
    """Each template's reference verifies; without the lookups its calls rest on, the same writes
    are rejected as guesses."""
    for seed in range(30):
        kind, state, instruction, calls = generator(random.Random(seed))
        completion, meta = agents_module.solve(kind, state, calls)
        task = make_task("agents", 0, seed, f"Q: {instruction}\nA:", completion, meta)
        assert AgentsDomain().verify(task, completion).ok, (instruction, completion)
        if meta["lookups"]:
            writes = [c for c in calls if c not in meta["lookups"]]
            guessed = "".join(f"{CALL_OPEN}{c}{CALL_CLOSE}" for c in writes)
            assert AgentsDomain().verify(task, guessed).reason == "unread_value", (instruction, guessed)


@pytest.mark.parametrize(
    ("generator", "outcomes"),
    [
        (agents_module._kv_if_above, {"delete", "set"}),
        (agents_module._shop_if_fewer, {"add_stock", "remove_stock"}),
        (agents_module._shop_remove_more, {"first", "second"}),
        (agents_module._cal_first_free, {"from", "later"}),
    ],
)
def test_agents_conditional_templates_take_every_branch(generator: agents_module._Gen, outcomes: set[str]) -> None:
    """What a lookup returns decides the last call, and each outcome occurs, so no fixed answer passes."""
    seen = set()
    for seed in range(60):
        _, _, instruction, calls = generator(random.Random(seed))
        first, *_, last = (json.loads(c) for c in calls)
        if "first" in outcomes:
            seen.add("first" if last["args"]["item"] == first["args"]["item"] else "second")
        elif "from" in outcomes:  # the booked slot: the one asked for, or a later one
            hour = int(re.search(r"from (\d+) on", instruction)[1])
            seen.add("from" if json.loads(calls[1])["args"]["slot"] == hour else "later")
        else:
            seen.add(last["tool"])
    assert seen == outcomes


def test_agents_environments_report_errors_as_text() -> None:
    env = AgentsDomain().environment(KV_TASK)
    assert env.call('{"tool": "nope", "args": {}}') == "error: unknown tool 'nope'"
    assert env.call("not json").startswith("error: invalid JSON")
    assert env.call(json.dumps({"tool": "get", "args": {"key": "q"}})) == "error: no key 'q'"
    shop = AgentsDomain().environment({"meta": json.dumps({"env": "shop", "initial_state": {"pear": 2}})})
    assert shop.call(json.dumps({"tool": "remove_stock", "args": {"item": "pear", "qty": 3}})) == "error: only 2 pear in stock"
    cal = AgentsDomain().environment({"meta": json.dumps({"env": "calendar", "initial_state": {"mon": [9, 13]}})})
    assert cal.call(json.dumps({"tool": "book", "args": {"day": "mon", "slot": 9}})) == "error: mon 9 is taken"
    assert cal.call(call_json("bookings", day="mon")) == "9, 13"
    assert cal.call(call_json("bookings", day="tue")) == "none"
    assert cal.call(call_json("bookings", day="sun")) == "error: no day sun; days mon/tue/wed/thu/fri"


# --- search -----------------------------------------------------------------------------------

DOCS = ["Voltar lives in Kesh.", "Voltar was born in Tamor.", "Kesh is in Drumia.", "Tamor is in Velia.",
        "Mira lives in Kesh."]
SEARCH_TASK = {
    "task_id": "t",
    "domain": "search",
    "prompt": "Q: In which country does Voltar live?\nA:",
    "completion": "",
    "meta": json.dumps({"docs": DOCS, "answer": "Drumia", "hops": 2}),
}
HOP1 = _call("search", query="Voltar lives in") + "<result>Voltar lives in Kesh.</result>"
HOP2 = _call("search", query="Kesh is in") + "<result>Kesh is in Drumia.</result>"


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        (HOP1 + HOP2 + " Answer: Drumia", "ok"),
        (HOP1 + HOP2 + " Answer: the drumia.", "ok"),
        (HOP1 + HOP2 + " Answer: Velia", "wrong_answer"),
        (HOP1 + " Answer: Kesh", "wrong_answer"),  # one-hop answer to a two-hop question
        (HOP1 + HOP2 + " Answer: I think it is Drumia maybe", "wrong_answer"),
        (HOP1 + HOP2 + " It is Drumia.", "no_answer"),
        (HOP1 + HOP2 + " Answer:", "no_answer"),
        (" Answer: Drumia", "no_tool_call"),
        (HOP1 + '<call>{"tool": "search", "args": {"q": "Kesh"}}</call> Answer: Drumia', "bad_tool_call"),
    ],
)
def test_search_verdicts(completion: str, reason: str) -> None:
    v = SearchDomain().verify(SEARCH_TASK, completion)
    assert (v.ok, v.reason) == (reason == "ok", reason)


def test_search_tool_ranks_with_bm25() -> None:
    env = SearchEnv(DOCS)
    assert env.call(json.dumps({"tool": "search", "args": {"query": "Kesh is in"}})) == "Kesh is in Drumia."
    assert env.call(json.dumps({"tool": "search", "args": {"query": "Voltar born"}})) == "Voltar was born in Tamor."
    assert env.call(json.dumps({"tool": "search", "args": {"query": "Zork"}})) == "no results"
    # Rarer terms weigh more, and a term repeated in a short doc beats one in a long doc.
    scores = BM25(["kesh kesh", "kesh a b c d e f", "lives"]).scores("kesh")
    assert scores[0] > scores[1] > 0 == scores[2]


def test_search_multi_hop_tasks_chain_their_calls(tasks: dict[str, list[dict]]) -> None:
    for t in tasks["search"]:
        meta = json.loads(t["meta"])
        assert len(split_calls(t["completion"])) == meta["hops"]
        assert 4 <= len(meta["docs"]) <= 11
        # The last search result states the answer, so the trace is a real derivation.
        results = [part.split(RESULT_CLOSE)[0] for part in t["completion"].split(RESULT_OPEN)[1:]]
        named = [(r.split()[0], r.split()[-1].rstrip(".")) for r in results]  # each result's subject and object
        assert meta["answer"] in named[-1]
        # Each later query is about an entity the previous result named.
        for entities, call in zip(named, split_calls(t["completion"])[1:]):
            assert json.loads(call)["args"]["query"].split()[0] in entities
    assert {json.loads(t["meta"])["hops"] for t in tasks["search"]} == {1, 2, 3}


def test_search_backward_questions_need_a_precise_query(tasks: dict[str, list[dict]]) -> None:
    """'Who lives in Kesh?' is found by "lives in Kesh"; the town alone often finds another doc."""
    question = lambda t: t["prompt"].rsplit("Q: ", 1)[1]  # noqa: E731  # a follow-up's prompt holds the first question too
    backward = [t for t in tasks["search"] if question(t).startswith("Who lives in ")]
    assert len(backward) >= 10
    misled = 0
    for t in backward:
        town = question(t).removeprefix("Who lives in ").split("?")[0]
        wanted = f"{json.loads(t['meta'])['answer']} lives in {town}."
        env = get_domain("search").environment(t)
        assert env.call(call_json("search", query=f"lives in {town}")) == wanted
        misled += env.call(call_json("search", query=town)) != wanted
    assert 0 < misled < len(backward)
