"""The catalog on SQLite and on a real PostgreSQL server: one code path, run roots sharing one catalog,
concurrent writers, the version-1 migration, and the errors a user sees."""

import os
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


# Nightly (`pytest -m nightly`), not CI: two whole pipelines of both micro domains at once take minutes on 2 cores, over
# what CI's budget has left; CI runs two of one domain from generate onwards (tests/test_kill.py,
# test_two_runs_on_two_run_roots_share_one_postgres_catalog).
@pytest.mark.nightly
def test_two_pipelines_on_two_run_roots_share_one_postgres_catalog(tmp_path, postgres):
    """Both finish; each run root's rows name its own intact files (doctor: nothing); `distillery ls`
    lists every artifact of both, each once; the same work in the two roots is two rows, not one."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from data.doctor import doctor
    from flows.plan import plan

    _emptied(postgres)  # the other tests' rows would be listed too
    roots = [tmp_path / "alice", tmp_path / "bob"]
    overrides = lambda root: [f"run_root={root}", "domains=[code, math]", f"catalog.url={postgres}"]  # noqa: E731
    with prefect_test_harness(server_startup_timeout=120):
        # One torch thread a run: two runs of two threads on two cores spin-wait on each other (tests/test_kill.py).
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--config", str(REPO / "configs" / "micro.yaml"),
                                   *(a for o in overrides(root) for a in ("--set", o))], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for root in roots]
        try:
            logs = [p.communicate(timeout=900)[0] for p in procs]
        finally:
            for p in procs:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    planned = {item.id for item in plan(load_config(REPO / "configs" / "micro.yaml", overrides(roots[0]))).values()}
    for root in roots:
        assert {r.id for r in Catalog(root, postgres).list()} == planned
        assert doctor(root, url=postgres).problems == []
        assert not (root / CATALOG_FILE).exists()  # the rows went to the server, not to a file beside them
    listed = subprocess.run([sys.executable, "-m", "flows.cli", "ls", "--root", str(roots[0]), "--catalog", postgres],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()[1:]
    assert sorted((line.split()[0], line.split()[-1]) for line in listed) == sorted((i, str(root.resolve())) for i in planned for root in roots)
