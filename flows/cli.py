"""`distillery`: run the pipeline or one stage, and inspect artifacts and their lineage."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from data import tables  # noqa: E402
from data.catalog import Catalog  # noqa: E402
from data.errors import ArtifactError  # noqa: E402
from data.lineage_view import render_json, render_mermaid, render_tree  # noqa: E402
from flows.config import ConfigError, PipelineConfig, load_config  # noqa: E402
from flows.plan import DOMAIN_STAGES, STAGES, Plan, outputs, plan  # noqa: E402


def _preflight(config: PipelineConfig, p: Plan) -> Catalog:
    """Read-only checks before any flow starts: every artifact the catalog already has is intact."""
    catalog = Catalog(config.run_root)
    for item in p.values():
        catalog.find(item.id)
    return catalog


def cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline import pipeline

    config = load_config(args.config, args.set)
    _preflight(config, plan(config))
    result = pipeline(config)
    print(f"\nartifacts: {Path(config.run_root).resolve()}  (distillery ls --root {config.run_root})")
    print(f"report:    {Path(result['report']).resolve()}")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from flows import base, baseline, distill, dsa_warmup, evaluate, generate, prepare, train_expert, verify
    from flows.artifacts import require

    config = load_config(args.config, args.set)
    if args.name not in STAGES:
        raise ValueError(f"unknown stage {args.name!r} (stages: {', '.join(STAGES)})")
    needs_domain = args.name in DOMAIN_STAGES and args.name != "prepare"
    if needs_domain and not args.domain:
        raise ValueError(f"stage {args.name!r} needs --domain (one of: {', '.join(config.domains)})")
    if args.domain and args.name not in DOMAIN_STAGES:
        raise ValueError(f"stage {args.name!r} takes no --domain")
    p = plan(config)
    catalog = _preflight(config, p)
    domains = [args.domain] if args.domain else ([d for d in config.domains] if args.name in DOMAIN_STAGES else [None])
    for d in domains:
        for item in outputs(p, args.name, d):
            for parent in (x for x in p.values() if x.id in item.parents):
                require(catalog, parent)
    flows = {
        "prepare": lambda: prepare.prepare(config, args.domain),
        "base": lambda: base.base(config),
        "train_expert": lambda: train_expert.train_expert(args.domain, config),
        "dsa_warmup": lambda: dsa_warmup.dsa_warmup(args.domain, config),
        "generate": lambda: generate.generate(args.domain, config),
        "verify": lambda: verify.verify(args.domain, config),
        "distill": lambda: distill.distill(config),
        "baseline": lambda: baseline.baseline(config),
        "evaluate": lambda: evaluate.evaluate(config),
    }
    print(flows[args.name]())
    return 0


def _root(args: argparse.Namespace) -> Catalog:
    root = args.root if args.root else load_config(args.config).run_root
    catalog = Catalog(root)
    if not catalog.exists():
        raise ArtifactError(f"no catalog at {catalog.path}: run the pipeline first, or pass --root")
    return catalog


def cmd_ls(args: argparse.Namespace) -> int:
    catalog = _root(args)
    print(f"{'id':16}  {'kind':10}  {'stage':12}  {'domain':7}  {'name':11}  {'size':>12}  created")
    for r in catalog.list(stage=args.stage, domain=args.domain):
        size = f"{r.rows} rows" if r.rows is not None else f"{r.bytes} B"
        print(f"{r.id:16}  {r.kind:10}  {r.stage:12}  {r.domain or '-':7}  {r.name:11}  {size:>12}  {r.created_at}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    catalog = _root(args)
    record = catalog.get(args.id)
    path = catalog.resolve(record)
    print(f"{record.stage}/{record.domain or '-'}/{record.name}  {record.kind}  {path}")
    print(f"parents: {', '.join(record.parents) or '(raw source)'}")
    print(f"params: {json.dumps(record.params, sort_keys=True)}")
    print(f"code: {record.code_version}  flow run: {record.flow_run_id}")
    if record.kind != "dataset":
        print(f"files: {', '.join(sorted(f.name for f in path.iterdir()))}")
        return 0
    table = tables.read_table(path)
    print(f"\nschema ({table.num_rows} rows):")
    for field in table.schema:
        print(f"  {field.name}: {field.type}")
    print(f"\nfirst {args.rows} rows:")
    for row in table.slice(0, args.rows).to_pylist():
        print(json.dumps(row, ensure_ascii=False)[:2000])
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    tree = _root(args).ancestry(args.id)
    print({"tree": render_tree, "json": render_json, "mermaid": render_mermaid}[args.format](tree))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillery", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=None, help="pipeline YAML (default: configs/tiny.yaml)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting, e.g. distill.steps=800")

    def root_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root", default=None, help="run root (default: the config's run_root)")
        p.add_argument("--config", default=None, help="pipeline YAML whose run_root to read")

    run = sub.add_parser("run", help="run the whole pipeline")
    config_args(run)
    run.set_defaults(func=cmd_run)
    stage = sub.add_parser("stage", help="run one stage from inputs already in the catalog")
    stage.add_argument("name", help=f"one of: {', '.join(STAGES)}")
    stage.add_argument("--domain", default=None)
    config_args(stage)
    stage.set_defaults(func=cmd_stage)
    ls = sub.add_parser("ls", help="list artifacts")
    root_args(ls)
    ls.add_argument("--stage", default=None)
    ls.add_argument("--domain", default=None)
    ls.set_defaults(func=cmd_ls)
    show = sub.add_parser("show", help="schema and first rows of an artifact")
    root_args(show)
    show.add_argument("id", help="artifact id (a unique prefix will do)")
    show.add_argument("--rows", type=int, default=5)
    show.set_defaults(func=cmd_show)
    lineage = sub.add_parser("lineage", help="ancestry of an artifact down to its raw sources")
    root_args(lineage)
    lineage.add_argument("id")
    lineage.add_argument("--format", choices=["tree", "json", "mermaid"], default="tree")
    lineage.set_defaults(func=cmd_lineage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ArtifactError, ValueError) as e:
        print(f"distillery: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
