"""The artifact store: Parquet + footer lineage, checkpoints + manifest, SQLite catalog, rendering."""

import json

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset

from data import tables
from data.catalog import Catalog
from data.checkpoints import load_checkpoint, read_manifest, save_checkpoint
from data.errors import ArtifactError
from data.lineage import LineageRecord, artifact_id, code_version
from data.lineage_view import render_json, render_mermaid, render_tree


def record(id_, name="seed", parents=(), kind="dataset", uri=None):
    return LineageRecord(
        id=id_, kind=kind, stage="prepare", domain="math", name=name, uri=uri or f"{name}-{id_}.parquet",
        parents=list(parents), params={"n": 3}, code_version=code_version(),
    )


def test_artifact_id_depends_on_every_input():
    base = artifact_id("s", "math", "seed", "c", {"a": 1}, ["p1", "p2"])
    assert base == artifact_id("s", "math", "seed", "c", {"a": 1}, ["p2", "p1"])
    variants = [
        artifact_id("t", "math", "seed", "c", {"a": 1}, ["p1", "p2"]),
        artifact_id("s", "code", "seed", "c", {"a": 1}, ["p1", "p2"]),
        artifact_id("s", "math", "eval", "c", {"a": 1}, ["p1", "p2"]),
        artifact_id("s", "math", "seed", "d", {"a": 1}, ["p1", "p2"]),
        artifact_id("s", "math", "seed", "c", {"a": 2}, ["p1", "p2"]),
        artifact_id("s", "math", "seed", "c", {"a": 1}, ["p1"]),
    ]
    assert len({base, *variants}) == 7


def test_parquet_roundtrip_keeps_lineage_in_footer(tmp_path):
    path = tmp_path / "d" / "seed.parquet"
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)]
    rec = tables.write_table(rows, path, record("abc"))
    assert rec.rows == 5 and rec.bytes == path.stat().st_size
    assert tables.read_rows(path) == rows
    footer = json.loads(pq.read_schema(path).metadata[b"distillery.lineage"])
    assert footer["id"] == "abc" and footer["params"] == {"n": 3}
    assert tables.read_record(path).id == "abc"
    assert load_dataset("parquet", data_files=str(path), split="train")[0] == rows[0]
    assert [p.name for p in path.parent.iterdir()] == ["seed.parquet"]  # no temporary left


def test_corrupt_parquet_is_named(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ArtifactError, match="bad.parquet"):
        tables.read_rows(path)
    with pytest.raises(ArtifactError, match="bad.parquet"):
        tables.read_record(path)


def test_empty_dataset_needs_a_schema(tmp_path):
    with pytest.raises(ArtifactError, match="no rows"):
        tables.write_table([], tmp_path / "x.parquet", record("e"))


def test_catalog_find_list_ancestry(tmp_path):
    catalog = Catalog(tmp_path)
    for rec, rows in ((record("root1", "seed"), [{"a": 1}]), (record("root2", "eval"), [{"a": 2}]), (record("child", "mix", ["root1", "root2"]), [{"a": 3}])):
        catalog.add(tables.write_table(rows, tmp_path / rec.uri, rec))
    assert catalog.find("child").parents == ["root1", "root2"]
    assert catalog.find("nope") is None
    assert catalog.get("chi").id == "child"  # unique prefix
    assert {r.id for r in catalog.list(domain="math")} == {"root1", "root2", "child"}
    tree = catalog.ancestry("child")
    assert [p["record"]["id"] for p in tree["parents"]] == ["root1", "root2"]
    text = render_tree(tree)
    assert "child" in text and "├── prepare/math/seed" in text and "└── prepare/math/eval" in text
    assert json.loads(render_json(tree))["record"]["id"] == "child"
    assert "aroot1 --> achild" in render_mermaid(tree)


def test_catalog_treats_missing_file_as_absent_and_corrupt_file_as_error(tmp_path):
    catalog = Catalog(tmp_path)
    rec = tables.write_table([{"a": 1}], tmp_path / "x.parquet", record("x1", uri="x.parquet"))
    catalog.add(rec)
    (tmp_path / "x.parquet").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="x.parquet"):
        catalog.find("x1")
    (tmp_path / "x.parquet").unlink()
    assert catalog.find("x1") is None


def test_unknown_id_and_missing_catalog(tmp_path):
    with pytest.raises(ArtifactError, match="no catalog"):
        Catalog(tmp_path).get("abc")
    Catalog(tmp_path).add(record("abc"))
    with pytest.raises(ArtifactError, match="'zzz'"):
        Catalog(tmp_path).get("zzz")


def saved_tiny_checkpoint(tmp_path):
    """A tiny model with tied embeddings, saved as checkpoint m1; returns (model, tokenizer, path)."""
    from experts.model import ModelConfig, build_model
    from experts.tokenizer import train_tokenizer

    tok = train_tokenizer(["Q: 1+2=\nA: 3"] * 20, 300)
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, seed=0)
    path = tmp_path / "ckpt"
    save_checkpoint(model, tok, path, record("m1", "model", kind="checkpoint", uri="ckpt"))
    return model, tok, path


def test_checkpoint_roundtrip(tmp_path):
    model, tok, path = saved_tiny_checkpoint(tmp_path)
    assert read_manifest(path).id == "m1"
    loaded, tok2 = load_checkpoint(path)
    assert type(loaded).__name__ == "DeepseekV32ForCausalLM"
    assert tok2("Q: 1")["input_ids"] == tok("Q: 1")["input_ids"]
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert (a == b).all()


def test_checkpoints_load_concurrently(tmp_path):
    """The pipeline loads checkpoints from several domain threads at once; `from_pretrained` patches globals
    (default device, `tie_weights`) and is not thread-safe, so every load must still give real, tied weights."""
    from concurrent.futures import ThreadPoolExecutor

    model, _, path = saved_tiny_checkpoint(tmp_path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        loaded = list(pool.map(lambda _: load_checkpoint(path)[0], range(24)))
    for m in loaded:
        assert not any(t.is_meta for t in m.state_dict().values())
        assert m.lm_head.weight is m.model.embed_tokens.weight
        for a, b in zip(model.state_dict().values(), m.state_dict().values()):
            assert (a == b).all()
