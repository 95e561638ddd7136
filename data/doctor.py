"""`distillery doctor`: every artifact checked against the catalog, the catalog against the files.

Every artifact carries its own lineage record (the Parquet footer, a directory's ``lineage.json``),
so the catalog is an index that can be rebuilt: losing ``catalog.sqlite`` loses nothing.

Checked, for each catalog row: its file is there; the record in its footer or manifest equals the
row; its size and sha256 are the ones recorded when it was written (`data.integrity`). For each
artifact under the run root that the catalog lacks: whether it is intact on its own (readable, its
values equal to the footer's digest, a directory's files to its manifest's fingerprint). And the
temporary files that dead writers left (``.<name>.tmp-<host>-<pid>`` of a process of this host no longer running).
Work directories (``.work/<id>/``: a killed stage's snapshots or shards) are listed with their
size; one whose artifact the catalog already lists is a problem: nothing will read it again.

Repair never deletes: a damaged file, a dead writer's temporary file and an unreadable catalog
are moved to ``quarantine/<time>/`` under the run root, keeping their relative paths. Rows whose
files are gone or damaged are dropped (the next run redoes that work), a missing or unreadable
catalog is rebuilt from the footers and manifests of the intact artifacts, and intact artifacts
the catalog lacks are added to it. The one thing repair removes is the work directory of a saved
artifact (the next run would too); any other work directory is left to whoever started that run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from data import tables
from data.catalog import CATALOG_FILE, Catalog
from data.checkpoints import read_manifest
from data.errors import ArtifactError
from data.integrity import content_bytes, damage, fingerprint
from data.lineage import MANIFEST, LineageRecord
from data.temporary import WORK, leftovers

QUARANTINE = "quarantine"
# Written beside the file once it is complete: the footer or manifest cannot hold them.
_AFTER_WRITE = ("bytes", "sha256")


@dataclass(frozen=True)
class Problem:
    """``kind``: catalog_missing, catalog_unreadable, missing_file, unreadable, lineage_mismatch,
    damaged, uncatalogued (an intact artifact the catalog lacks), orphan_temp or finished_work (the
    work directory of a saved artifact)."""

    kind: str
    path: Path | str  # the file, or the url of a catalog on a database server
    detail: str
    artifact_id: str | None = None

    def __str__(self) -> str:
        return f"{self.kind:18}  {self.artifact_id or '-':16}  {self.path}: {self.detail}"


@dataclass
class Report:
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    work: dict[Path, int] = field(default_factory=dict)  # unfinished stages' work directories -> bytes


def _lineage_of(path: Path) -> LineageRecord:
    """The record a file carries: a dataset's footer, a directory's manifest."""
    return read_manifest(path) if path.is_dir() else tables.read_record(path)


def _without(record: LineageRecord, names: tuple[str, ...]) -> dict:
    return {k: v for k, v in dataclasses.asdict(record).items() if k not in names}


def _artifacts_on_disk(root: Path) -> list[Path]:
    """Parquet files and directories with a manifest, outside quarantine and hidden (work, temporary) paths."""
    found = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if parts[0] == QUARANTINE or any(p.startswith(".") for p in parts):
            continue
        if (path.is_file() and path.suffix == ".parquet") or (path.is_dir() and (path / MANIFEST).is_file()):
            found.append(path)
    return found


def _check_row(catalog: Catalog, record: LineageRecord) -> Problem | None:
    path = catalog.resolve(record)
    if not path.exists():
        return Problem("missing_file", path, "in the catalog, not on disk", record.id)
    try:
        on_disk = _lineage_of(path)
    except ArtifactError as e:
        return Problem("unreadable", path, str(e), record.id)
    if _without(on_disk, _AFTER_WRITE) != _without(record, _AFTER_WRITE):
        differ = sorted(k for k, v in _without(record, _AFTER_WRITE).items() if getattr(on_disk, k) != v)
        return Problem("lineage_mismatch", path, f"its own lineage record differs from the catalog's in {', '.join(differ)}", record.id)
    problem = damage(record, path)
    return None if problem is None else Problem("damaged", path, problem, record.id)


def _check_alone(root: Path, path: Path) -> tuple[LineageRecord | None, Problem | None]:
    """(the catalog row to rebuild, None) for an intact artifact, else (None, what is wrong)."""
    try:
        record = _lineage_of(path)
        if path.is_file():
            table = tables.read_table(path)
            if record.digest is not None and tables.digest(table) != record.digest:
                return None, Problem("damaged", path, "its values differ from the digest in its footer", record.id)
    except ArtifactError as e:
        return None, Problem("unreadable", path, str(e))
    if record.uri != path.relative_to(root).as_posix():
        return None, Problem("lineage_mismatch", path, f"its lineage record places it at {record.uri}", record.id)
    if path.is_dir() and (problem := damage(record, path)) is not None:  # its manifest holds size and fingerprint
        return None, Problem("damaged", path, problem, record.id)
    if path.is_file():
        record.bytes, record.sha256 = content_bytes(path), fingerprint(path)
    return record, None


def _quarantine(root: Path, path: Path, stamp: str) -> Path:
    target = root / QUARANTINE / stamp / path.relative_to(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


def doctor(root: str | Path, repair: bool = False, url: str | None = None) -> Report:
    """Check the run root at ``root`` and its rows in the catalog at ``url`` (default: the run root's own
    file); with ``repair``, also mend them (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"run root {root} is not a directory")
    catalog, report = Catalog(root, url), Report()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")

    def move(path: Path, why: str) -> None:
        report.actions.append(f"quarantined {path} -> {_quarantine(root, path, stamp)} ({why})")

    rows: list[LineageRecord] = []
    if not catalog.exists():
        report.problems.append(Problem("catalog_missing", catalog.path, "no catalog: rebuilt from the artifacts' own records with --repair"))
    else:
        try:
            rows = catalog.list()
        except ArtifactError as e:
            report.problems.append(Problem("catalog_unreadable", catalog.path or catalog.where, str(e)))
            if repair and catalog.path is not None:  # a database server is not ours to move aside
                for sibling in (catalog.path, *(catalog.path.with_name(CATALOG_FILE + s) for s in ("-journal", "-wal", "-shm"))):
                    if sibling.exists():
                        move(sibling, "unreadable catalog")

    in_catalog, saved = set(), set()
    for record in rows:
        report.checked += 1
        in_catalog.add(catalog.resolve(record))
        problem = _check_row(catalog, record)
        if problem is None:
            saved.add(record.id)
            continue
        report.problems.append(problem)
        if repair:
            if problem.kind != "missing_file":
                move(problem.path, problem.kind)
            catalog.remove(record.id)
            report.actions.append(f"dropped catalog row {record.id} ({problem.kind})")

    for path in _artifacts_on_disk(root):
        if path in in_catalog:
            continue
        report.checked += 1
        record, problem = _check_alone(root, path)
        if problem is not None:
            report.problems.append(problem)
            if repair:
                move(path, problem.kind)
            continue
        report.problems.append(Problem("uncatalogued", path, "intact, not in the catalog", record.id))
        if repair:
            catalog.add(record)
            report.actions.append(f"catalogued {record.id} from {path.relative_to(root)}")

    for path in leftovers(root, exclude=QUARANTINE):
        report.problems.append(Problem("orphan_temp", path, "left by a writer that is no longer running"))
        if repair:
            move(path, "orphan_temp")

    for work in sorted((root / WORK).glob("*")):
        size = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
        if work.name not in saved:
            report.work[work] = size
            continue
        report.problems.append(Problem("finished_work", work, f"work in progress of a saved artifact: {size:,} bytes nothing reads", work.name))
        if repair:
            shutil.rmtree(work)
            report.actions.append(f"removed {work} ({size:,} bytes; its artifact {work.name} is saved)")
    return report
