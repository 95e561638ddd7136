"""The catalog on SQLite and on a real PostgreSQL server: one code path, run roots sharing one catalog,
concurrent writers, the version-1 migration, and the errors a user sees."""

import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from data.catalog import CATALOG_FILE, ROOT_ID_FILE, SCHEMA_VERSION, Catalog, engine_url
from data.errors import ArtifactError
from data.lineage import LineageRecord
from flows.config import ConfigError, load_config
from tests.postgres_server import postgres_server

REPO = Path(__file__).resolve().parent.parent


def record(artifact_id: str, stage: str = "prepare", domain: str | None = "math") -> LineageRecord:
    return LineageRecord(id=artifact_id, kind="dataset", stage=stage, domain=domain, name="seed", uri=f"{stage}/{artifact_id}.parquet",
                         parents=[], params={"n": 1}, code_version={})


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request, tmp_path):
    """A catalog that several run roots share: a SQLite file outside them, or a PostgreSQL database (emptied per test)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.sqlite'}"
    return _emptied(request.getfixturevalue("postgres"))


def test_run_roots_sharing_a_catalog_each_see_their_own_rows(shared_url, tmp_path):
    a, b = Catalog(tmp_path / "a", shared_url), Catalog(tmp_path / "b", shared_url)
    a.add(record("1111aaaa"))
    a.add(record("2222bbbb", stage="base", domain=None))
    b.add(record("1111aaaa"))  # the same work done in another run root: its own row, its own files
    b.add(record("3333cccc"))
    ids = lambda c, **kw: sorted(r.id for r in c.list(**kw))  # noqa: E731
    assert ids(a) == ["1111aaaa", "2222bbbb"] and ids(b) == ["1111aaaa", "3333cccc"]
    every = a.rows(every_root=True)
    assert sorted((Path(root).name, r.id) for root, r in every) == [("a", "1111aaaa"), ("a", "2222bbbb"), ("b", "1111aaaa"), ("b", "3333cccc")]
    assert ids(a, stage="base") == ["2222bbbb"]
    a.add(record("1111aaaa"))  # a re-add replaces the row
    assert len(a.rows(every_root=True)) == 4
    assert a.get("2222").id == "2222bbbb"
    with pytest.raises(ArtifactError, match="unknown artifact id '3333'"):
        a.get("3333")  # b's artifact is not a's
    a.remove("1111aaaa")
    assert ids(a) == ["2222bbbb"] and ids(b) == ["1111aaaa", "3333cccc"]
    # A run root mounted at another path keeps its rows: they are keyed by its id, not its path.
    (tmp_path / "a").rename(tmp_path / "a-moved")
    moved = Catalog(tmp_path / "a-moved", shared_url)
    assert ids(moved) == ["2222bbbb"]
    moved.add(record("6666ffff"))
    assert ids(moved) == ["2222bbbb", "6666ffff"] and len(a.rows(every_root=True)) == 4


def test_a_copied_run_root_is_refused_until_it_has_an_id_of_its_own(shared_url, tmp_path):
    """`cp -r` copies the root's id too: a copy writing to a catalog its original uses would own the
    original's rows, so its first write is refused, naming both roots and the remedy."""
    original = Catalog(tmp_path / "original", shared_url)
    original.add(record("1111aaaa"))
    shutil.copytree(tmp_path / "original", tmp_path / "copy")
    copy = Catalog(tmp_path / "copy", shared_url)
    with pytest.raises(ArtifactError, match=rf"run root {tmp_path / 'copy'} is a copy of {tmp_path / 'original'} .*delete {tmp_path / 'copy' / ROOT_ID_FILE}"):
        copy.add(record("2222bbbb"))
    assert [r.id for r in original.list()] == ["1111aaaa"]  # nothing written
    (tmp_path / "copy" / ROOT_ID_FILE).unlink()
    copy.add(record("2222bbbb"))
    assert [r.id for r in copy.list()] == ["2222bbbb"] and [r.id for r in original.list()] == ["1111aaaa"]
    # A root with its catalog file inside shares it with nobody: a copy takes its own copy of the rows.
    Catalog(tmp_path / "own").add(record("1111aaaa"))
    shutil.copytree(tmp_path / "own", tmp_path / "own-copy")
    Catalog(tmp_path / "own-copy").add(record("3333cccc"))
    assert sorted(r.id for r in Catalog(tmp_path / "own-copy").list()) == ["1111aaaa", "3333cccc"]
    assert [r.id for r in Catalog(tmp_path / "own").list()] == ["1111aaaa"]


WRITER = textwrap.dedent("""
    import sys
    from data.catalog import Catalog
    from data.lineage import LineageRecord
    root, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    catalog = Catalog(root, url)
    for i in range(n):
        catalog.add(LineageRecord(id=f"{i:08x}", kind="dataset", stage="generate", domain="code", name="generations",
                                  uri=f"generate/{i}.parquet", parents=[], params={}, code_version={}))
        catalog.list(stage="generate")  # readers between the writes, as stages do
""")


def test_concurrent_writers_lose_nothing(shared_url, tmp_path):
    """Four processes, each a run root, write 60 rows at once into one new catalog (its schema created
    by whichever comes first): every row is there, and nobody saw an error."""
    n, roots = 60, [tmp_path / f"root{i}" for i in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), shared_url, str(n)], cwd=REPO, stderr=subprocess.PIPE, text=True)
             for root in roots]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    every = Catalog(roots[0], shared_url).rows(every_root=True)
    assert len(every) == 4 * n and len({(root, r.id) for root, r in every}) == 4 * n
    assert all(len(Catalog(root, shared_url).list()) == n for root in roots)


def test_a_version_1_catalog_file_is_migrated_in_place(tmp_path):
    """A catalog written before run-root ids: opened, its rows become this run root's, in one transaction."""
    old = record("4444dddd")
    with sqlite3.connect(tmp_path / CATALOG_FILE) as conn:
        conn.execute("CREATE TABLE artifacts (id TEXT PRIMARY KEY, kind TEXT NOT NULL, stage TEXT NOT NULL, domain TEXT, "
                     "name TEXT NOT NULL, uri TEXT NOT NULL, created_at TEXT NOT NULL, record TEXT NOT NULL)")
        conn.execute("INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (old.id, old.kind, old.stage, old.domain, old.name, old.uri, old.created_at, old.to_json()))
    assert not (tmp_path / ROOT_ID_FILE).exists()
    catalog = Catalog(tmp_path)
    assert catalog.list() == [old]  # a read migrates
    with sqlite3.connect(tmp_path / CATALOG_FILE) as conn:
        assert conn.execute("SELECT version FROM catalog_schema").fetchall() == [(SCHEMA_VERSION,)]
        assert conn.execute("SELECT root_id, root FROM artifacts").fetchall() == [((tmp_path / ROOT_ID_FILE).read_text().strip(), str(tmp_path.resolve()))]
        assert {t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {"artifacts", "catalog_schema"}
    catalog.add(record("5555eeee"))
    assert sorted(r.id for r in catalog.list()) == ["4444dddd", "5555eeee"]


def test_catalog_urls_are_checked_at_load_and_a_server_that_is_down_is_named(tmp_path, postgres):
    with pytest.raises(ConfigError, match=r"catalog\.url.*mysql://u@h/db.*expected sqlite:///<path> or postgresql://"):
        load_config(None, [f"run_root={tmp_path}", "catalog.url=mysql://u@h/db"])
    port = postgres.rsplit(":", 1)[1].split("/")[0]
    down = postgres.replace(f":{port}/", ":1/").replace("distillery@", "distillery:hunter2@")
    with pytest.raises(ArtifactError, match=r"cannot use the catalog at postgresql://distillery:\*\*\*@127.0.0.1:1/catalog") as e:
        Catalog(tmp_path, down).list()
    assert "hunter2" not in str(e.value)


def _emptied(url: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(engine_url(url))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS artifacts, catalog_schema"))
    engine.dispose()
    return url


def test_a_run_root_moves_onto_the_server_with_doctor_repair(tmp_path, postgres):
    """A user who outgrows one machine moves a run root's catalog onto the server: `doctor --repair`
    with the server's url catalogues the root's files from the records in their footers."""
    from data import tables
    from data.doctor import doctor

    url, root = _emptied(postgres), tmp_path / "run"
    rows = [{"prompt": f"q{i}", "answer": i} for i in range(3)]
    written = [tables.write_table(rows, root / r.uri, r) for r in (record("3333cccc"), record("4444dddd", stage="verify"))]
    (root / CATALOG_FILE).unlink(missing_ok=True)  # nothing catalogued them: a copy of someone's files, say

    doctor(root, repair=True, url=url)

    moved = Catalog(root, url)
    assert sorted(r.id for r in moved.list()) == ["3333cccc", "4444dddd"]
    assert [tables.read_rows(moved.resolve(r)) for r in written] == [rows, rows]
    assert doctor(root, url=url).problems == [] and not (root / CATALOG_FILE).exists()
