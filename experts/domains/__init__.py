"""Task domains for expert training: each makes tasks, verifies completions and, for tool-using
domains, builds the environment that answers the model's calls. See ``base`` for the protocol."""

from __future__ import annotations

from experts.domains.agents import AgentsDomain
from experts.domains.base import Domain, ToolEnv, Verdict
from experts.domains.code import CodeDomain
from experts.domains.humaneval import HumanEvalDomain
from experts.domains.math import MathDomain
from experts.domains.search import SearchDomain

DOMAINS: dict[str, Domain] = {
    d.name: d for d in (MathDomain(), CodeDomain(), AgentsDomain(), SearchDomain(), HumanEvalDomain())
}


def get_domain(name: str) -> Domain:
    try:
        return DOMAINS[name]
    except KeyError:
        raise ValueError(f"unknown domain {name!r}; known: {', '.join(sorted(DOMAINS))}") from None


__all__ = ["DOMAINS", "Domain", "ToolEnv", "Verdict", "get_domain"]
