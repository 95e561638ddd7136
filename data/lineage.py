"""The lineage record every dataset and checkpoint carries, and the identity hash that names it.

An artifact's id is a hash of what produced it: (stage, domain, output name, the stage's code hash,
parameters, parent keys). Equal ids mean equal work, which is what lets a stage skip itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parent.parent

Kind = Literal["dataset", "checkpoint", "report", "index"]
MANIFEST = "lineage.json"  # the record's file inside an artifact directory


@dataclasses.dataclass
class LineageRecord:
    id: str
    kind: Kind
    stage: str
    domain: str | None
    name: str
    uri: str
    parents: list[str]
    params: dict[str, Any]
    code_version: dict[str, Any]
    flow_run_id: str | None = None
    created_at: str = dataclasses.field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    rows: int | None = None
    bytes: int | None = None
    digest: str | None = None  # hash of a dataset's values (`tables.digest`), for datasets written whole
    sha256: str | None = None  # the artifact's content fingerprint when written (`data.integrity.fingerprint`)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        """stage/domain/name, as people name an artifact."""
        return "/".join(x for x in (self.stage, self.domain, self.name) if x)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> LineageRecord:
        """Raises ValueError, naming what is wrong, for text that is not a lineage record."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a lineage record is a JSON object, not {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - names):
            raise ValueError(f"unknown lineage fields {', '.join(unknown)}")
        if missing := sorted(f.name for f in dataclasses.fields(cls)
                             if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
            raise ValueError(f"lineage record without {', '.join(missing)}")
        return cls(**data)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def artifact_id(stage: str, domain: str | None, name: str, code_hash: str, params: dict[str, Any], parents: list[str]) -> str:
    """Identity of an output: equal for equal (stage, domain, name, code, params, parents)."""
    payload = _canonical([stage, domain, name, code_hash, params, sorted(parents)])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """Git commit and dirty flag, for people: identities hash the source each stage runs instead (flows/identity.py)."""
    return {"git_commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
