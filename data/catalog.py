"""The lineage catalog: one row per artifact, in SQLite (by default one file at the run root) or in a
PostgreSQL database that several run roots and people share (`catalog.url`), through one
SQLAlchemy code path.

Artifact files live under a run root and their records store paths relative to it, so a run root
can be moved, copied or mounted elsewhere. Rows are keyed by the run root's id (the `ROOT_ID_FILE`
written in it on first use), not by its path: each run root sees its own rows wherever it is
mounted, and `list(every_root=True)` shows every root's rows of a shared catalog.

Schema versions: 1 had no run-root columns (a catalog file from before PostgreSQL); opening one
migrates it in one transaction, its rows given this run root's id. The version is kept in
`catalog_schema`.
"""

from __future__ import annotations

import json
import os
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Engine, Integer, MetaData, String, Table, Text, create_engine, event, exc, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateTable

from data import tables
from data.checkpoints import read_manifest
from data.errors import ArtifactError
from data.lineage import LineageRecord
from data.temporary import temporary

CATALOG_FILE = "catalog.sqlite"
ROOT_ID_FILE = "root-id"
LOCK_TIMEOUT_S = 60.0
SCHEMA_VERSION = 2
URL_SCHEMES = ("sqlite", "postgresql")

_METADATA = MetaData()
ARTIFACTS = Table(
    "artifacts",
    _METADATA,
    Column("root_id", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("root", Text, nullable=False),  # where the run root was mounted when the row was written: shown by `ls`
    Column("kind", Text, nullable=False),
    Column("stage", Text, nullable=False),
    Column("domain", Text),
    Column("name", Text, nullable=False),
    Column("uri", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("record", Text, nullable=False),
)
SCHEMA = Table("catalog_schema", _METADATA, Column("version", Integer, nullable=False))
_V1_COLUMNS = "id, kind, stage, domain, name, uri, created_at, record"
# Serialises schema creation between processes on one PostgreSQL database (CREATE IF NOT EXISTS alone races there).
_SCHEMA_LOCK = zlib.crc32(b"distillery catalog schema")


def engine_url(url: str) -> str:
    """`url` for SQLAlchemy: plain ``postgresql://`` goes through psycopg (3), the driver we install."""
    scheme = url.split(":", 1)[0]
    if scheme.split("+")[0] not in URL_SCHEMES:
        raise ValueError(f"catalog url {shown(url)!r}: expected sqlite:///<path> or postgresql://user@host:port/database")
    return "postgresql+psycopg" + url[len("postgresql"):] if scheme == "postgresql" else url


def shown(url: str) -> str:
    """`url` without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return url


def root_id(root: Path, create: bool = True) -> str:
    """The run root's id, made on first use (`create`; otherwise "" for a root that has none: it has no
    rows). Written under a temporary name and linked into place, so two processes that make it at
    once agree on the one that landed first."""
    path = root / ROOT_ID_FILE
    if not path.exists():
        if not create:
            return ""
        root.mkdir(parents=True, exist_ok=True)
        tmp = temporary(path)
        tmp.write_text(uuid.uuid4().hex + "\n")
        try:
            os.link(tmp, path)  # fails if another process got there first: its id stands
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


_ENGINES: dict[str, Engine] = {}
_READY: set[str] = set()  # urls whose schema this process has seen at SCHEMA_VERSION


def _engine(url: str) -> Engine:
    """One engine per url and process. No pool: every operation is one short transaction, and a
    pooled connection would outlive a catalog file that `doctor --repair` replaced."""
    if url not in _ENGINES:
        if url.startswith("sqlite"):
            engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": LOCK_TIMEOUT_S, "isolation_level": None})

            # The driver's implicit transactions would commit each DDL statement on its own; an explicit
            # BEGIN IMMEDIATE makes a write (a migration included) one transaction that waits for the lock.
            @event.listens_for(engine, "begin")
            def _begin(conn: Connection) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")
        else:
            engine = create_engine(url, poolclass=NullPool)
        _ENGINES[url] = engine
    return _ENGINES[url]


class Catalog:
    """The rows of one run root (`root`) in the catalog at `url` (default: the SQLite file in the run root)."""

    def __init__(self, root: str | Path, url: str | None = None):
        self.root = Path(root)
        self.url = engine_url(url) if url is not None else f"sqlite:///{self.root / CATALOG_FILE}"
        # The SQLite file, wherever it is (None: a database server).
        self.path = Path(make_url(self.url).database or "") if self.url.startswith("sqlite") else None
        self.where = str(self.path) if self.path is not None else shown(url or "")

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[Connection]:
        if self.path is not None:
            if not write and not self.path.exists():
                raise ArtifactError(f"no catalog at {self.where}: run the pipeline (or the prepare stage) first")
            if self.path.exists() and not self.path.is_file():
                raise ArtifactError(f"catalog {self.where} is not a file")
            if write:
                self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with _engine(self.url).connect() as conn:
                if not write and not self._ready():
                    with conn.begin():
                        write = not inspect(conn).has_table(SCHEMA.name)
                conn.info["write"] = write
                with conn.begin():
                    if write:
                        self._prepare_schema(conn)
                    yield conn
                _READY.add(self.url)
        except exc.OperationalError as e:
            if self.path is None:
                raise ArtifactError(f"cannot use the catalog at {self.where}: {e.orig}") from None
            if "locked" in str(e.orig):
                raise ArtifactError(f"catalog {self.where} stayed locked by another writer for {LOCK_TIMEOUT_S:g} s: a stuck "
                                    "process holds it (`fuser` names it); nothing was written") from None
            raise self._corrupt(e.orig) from e
        except exc.DatabaseError as e:
            raise self._corrupt(e.orig) from e

    def _ready(self) -> bool:
        # An empty SQLite file is a catalog with no rows: a run killed between creating the file and its first commit leaves one.
        return self.url in _READY and (self.path is None or self.path.stat().st_size > 0)

    def _corrupt(self, why: object) -> ArtifactError:
        return ArtifactError(f"corrupt catalog {self.where}: {why}; `distillery doctor --root {self.root} --repair` "
                             "rebuilds it from the artifacts' own lineage records")

    def _prepare_schema(self, conn: Connection) -> None:
        """Create the tables, or migrate a version-1 catalog, inside the caller's write transaction."""
        if conn.dialect.name == "postgresql":
            conn.execute(select(text(f"pg_advisory_xact_lock({_SCHEMA_LOCK})")))
        have = inspect(conn)
        if have.has_table(SCHEMA.name) and conn.execute(select(SCHEMA.c.version)).scalar() == SCHEMA_VERSION:
            return
        if have.has_table(ARTIFACTS.name) and "root_id" not in {c["name"] for c in have.get_columns(ARTIFACTS.name)}:
            conn.exec_driver_sql("ALTER TABLE artifacts RENAME TO artifacts_v1")
            conn.execute(CreateTable(ARTIFACTS))
            conn.execute(text(f"INSERT INTO artifacts (root_id, root, {_V1_COLUMNS}) SELECT :root_id, :root, {_V1_COLUMNS} FROM artifacts_v1"),
                         {"root_id": root_id(self.root), "root": str(self.root.resolve())})
            conn.exec_driver_sql("DROP TABLE artifacts_v1")
        else:
            conn.execute(CreateTable(ARTIFACTS, if_not_exists=True))
        conn.execute(CreateTable(SCHEMA, if_not_exists=True))
        conn.execute(SCHEMA.delete())
        conn.execute(SCHEMA.insert().values(version=SCHEMA_VERSION))

    def _record(self, text_: str) -> LineageRecord:
        try:
            return LineageRecord.from_json(text_)
        except ValueError as e:
            raise ArtifactError(f"corrupt catalog {self.where}: a row is not a lineage record ({e}); "
                                f"`distillery doctor --root {self.root} --repair` rebuilds it") from None

    def _mine(self) -> ColumnElement[bool]:
        return ARTIFACTS.c.root_id == root_id(self.root, create=False)

    def exists(self) -> bool:
        """Whether there is a catalog to read: the SQLite file, or any database server (reached on first use)."""
        return self.path is None or self.path.exists()

    def add(self, record: LineageRecord) -> None:
        row = {"root_id": root_id(self.root), "id": record.id, "root": str(self.root.resolve()), "kind": record.kind,
               "stage": record.stage, "domain": record.domain, "name": record.name, "uri": record.uri,
               "created_at": record.created_at, "record": record.to_json()}
        with self._connect(write=True) as conn:
            if self._shared():
                self._refuse_a_copy(conn, row["root_id"], row["root"])
            insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(ARTIFACTS).values(**row)
            conn.execute(insert.on_conflict_do_update(index_elements=["root_id", "id"], set_={k: v for k, v in row.items() if k not in ("root_id", "id")}))

    def _shared(self) -> bool:
        """Whether other run roots may write here: a server, or a SQLite file outside this run root."""
        return self.path is None or self.path.resolve().parent != self.root.resolve()

    def _refuse_a_copy(self, conn: Connection, rid: str, here: str) -> None:
        """A copied run root carries its original's id: in a catalog both use, each would own the other's rows.
        A root mounted at two paths of one machine is the same directory, not a copy."""
        others = conn.execute(select(ARTIFACTS.c.root).distinct().where(ARTIFACTS.c.root_id == rid, ARTIFACTS.c.root != here))
        for (other,) in others:
            theirs = Path(other) / ROOT_ID_FILE
            try:
                copy = theirs.read_text().strip() == rid and not theirs.samefile(Path(here) / ROOT_ID_FILE)
            except OSError:  # moved away, or not mounted here
                continue
            if copy:
                raise ArtifactError(f"run root {here} is a copy of {other} (its {ROOT_ID_FILE} came with it), and both keep their rows in "
                                    f"the catalog at {self.where}: delete {Path(here) / ROOT_ID_FILE} to make the copy a run root of its "
                                    f"own, then `distillery doctor --root {here} --catalog <url> --repair` catalogues its files")

    def remove(self, artifact_id: str) -> None:
        with self._connect(write=True) as conn:
            conn.execute(ARTIFACTS.delete().where(self._mine(), ARTIFACTS.c.id == artifact_id))

    def get(self, artifact_id: str) -> LineageRecord:
        with self._connect() as conn:
            rows = conn.execute(select(ARTIFACTS.c.id, ARTIFACTS.c.record).where(self._mine(), ARTIFACTS.c.id.startswith(artifact_id, autoescape=True))).all()
        rows = [r for r in rows if r.id == artifact_id] or rows
        if not rows:
            raise ArtifactError(f"unknown artifact id {artifact_id!r} in {self.where}")
        if len(rows) > 1:
            raise ArtifactError(f"artifact id prefix {artifact_id!r} is ambiguous in {self.where}")
        return self._record(rows[0].record)

    def find(self, artifact_id: str) -> LineageRecord | None:
        """The record if the catalog has it and its file is intact; None if absent.

        A record whose file is missing counts as absent (the work is redone); a file that is
        present but unreadable raises, so that nothing is silently overwritten.
        """
        if not self.exists():
            return None
        with self._connect() as conn:
            row = conn.execute(select(ARTIFACTS.c.record).where(self._mine(), ARTIFACTS.c.id == artifact_id)).first()
        if row is None:
            return None
        record = self._record(row[0])
        target = self.resolve(record)
        if not target.exists():
            return None
        on_disk = tables.read_record(target) if record.kind == "dataset" else read_manifest(target)
        if on_disk.id != record.id:
            raise ArtifactError(f"{target} holds artifact {on_disk.id}, but the catalog says {record.id}")
        return record

    def list(self, stage: str | None = None, domain: str | None = None, kind: str | None = None) -> list[LineageRecord]:
        """This run root's records, oldest first."""
        return [record for _, record in self.rows(stage, domain, kind)]

    def rows(self, stage: str | None = None, domain: str | None = None, kind: str | None = None,
             every_root: bool = False) -> list[tuple[str, LineageRecord]]:
        """(run root, record) of this run root's rows, or of every run root's in the catalog, oldest first."""
        if not self.exists():
            return []
        query = select(ARTIFACTS.c.root, ARTIFACTS.c.record)
        for column, value in (("stage", stage), ("domain", domain), ("kind", kind)):
            if value is not None:
                query = query.where(ARTIFACTS.c[column] == value)
        with self._connect() as conn:
            if not every_root:
                query = query.where(self._mine())  # (after connecting: opening a version-1 catalog gives the root its id)
            found = conn.execute(query.order_by(ARTIFACTS.c.created_at, ARTIFACTS.c.stage, ARTIFACTS.c.domain, ARTIFACTS.c.name)).all()
        return [(root, self._record(record)) for root, record in found]

    def resolve(self, record: LineageRecord) -> Path:
        return self.root / record.uri

    def ancestry(self, artifact_id: str) -> dict[str, Any]:
        """The record and, recursively, its parents: a tree down to the raw sources."""
        record = self.get(artifact_id)
        return {"record": json.loads(record.to_json()), "parents": [self.ancestry(p) for p in record.parents]}
