"""Per-stage code identity: a hash of the source of exactly the modules a stage runs.

A stage's code is its flow module (`flows/<stage>.py`) and everything that module imports from the
library, directly or not: the import closure, read off the same import graph (grimp's) that the
import-linter contracts check. Flows other than the stage's own (config, plumbing) are left out:
a setting reaches an identity through the stage's parameters, not through the file declaring it.
Domains are imported by name when a stage asks for one (`domains.get_domain`), so a stage that
runs domain code names its domains and their modules' closures are added. So editing
`distill/report.py` changes only the report's identity, and editing `domains/math.py` only the
identities of the stages that run the math domain's code.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import grimp

from domains import MODULES

PACKAGES = ("flows", "distill", "experts", "generation", "domains", "kernels", "data")


@cache
def _graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def closure(module: str) -> set[str]:
    """`module` and every module of ours it imports, directly or indirectly."""
    return {module, *_graph().find_upstream_modules(module)}


def stage_modules(stage: str, domains: Iterable[str] = ()) -> list[str]:
    """The modules whose source makes up `stage`'s code (running the given domains' code), sorted."""
    entry = f"flows.{stage}"
    modules = {entry}
    for imported in _graph().find_modules_directly_imported_by(entry):
        if not imported.startswith("flows."):
            modules |= closure(imported)
    for d in domains:
        modules |= closure(MODULES[d][0])
    return sorted(modules)


@cache
def code_hash(stage: str, domains: tuple[str, ...] = ()) -> str:
    digest = hashlib.sha256()
    for module in stage_modules(stage, domains):
        digest.update(module.encode())
        digest.update(_source(module))
    return digest.hexdigest()[:16]


def _source(module: str) -> bytes:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"cannot find the source of {module}")
    return Path(spec.origin).read_bytes()
