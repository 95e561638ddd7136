"""Task domains: each makes tasks, verifies completions and, for tool-using domains, builds the
environment that answers the model's calls. See ``base`` for the protocol.

A domain's module is imported when the domain is first asked for, not here: a stage's code
identity is the source of the modules it imports, and a math stage must not change when
``domains/code.py`` does.
"""

from __future__ import annotations

import importlib
import threading

from domains.base import Domain, ToolEnv, Verdict

# name -> (module, class): the built-in domains.
MODULES: dict[str, tuple[str, str]] = {
    "math": ("domains.math", "MathDomain"),
    "code": ("domains.code", "CodeDomain"),
    "agents": ("domains.agents", "AgentsDomain"),
    "search": ("domains.search", "SearchDomain"),
    "humaneval": ("domains.humaneval", "HumanEvalDomain"),
}
DOMAINS = tuple(MODULES)

_loaded: dict[str, Domain] = {}
_lock = threading.Lock()  # the pipeline's domain branches ask from several threads


def get_domain(name: str) -> Domain:
    if name not in MODULES:
        raise ValueError(f"unknown domain {name!r}; known: {', '.join(sorted(MODULES))}")
    with _lock:
        if name not in _loaded:
            module, cls = MODULES[name]
            _loaded[name] = getattr(importlib.import_module(module), cls)()
        return _loaded[name]


__all__ = ["DOMAINS", "MODULES", "Domain", "ToolEnv", "Verdict", "get_domain"]
