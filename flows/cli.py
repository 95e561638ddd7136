"""`distillery`: run the pipeline or one stage, and inspect artifacts and their lineage."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from data import integrity, tables
from data.catalog import Catalog
from data.doctor import QUARANTINE, doctor
from data.errors import ArtifactError
from data.lineage_view import PICTURE_FORMATS, render_json, render_mermaid, render_picture, render_tree
from data.temporary import temporary

# The pipeline's config (flows.config) imports every stage's config class, and with them torch and
# transformers: about 4 s. Commands that only read a run root (ls, show, lineage, doctor with --root)
# start in well under a second because flows.config, flows.plan and flows.stages are imported only
# by the commands that need a config.
if TYPE_CHECKING:
    from flows.config import PipelineConfig
    from flows.plan import Plan


def _check_run_root(root: Path) -> None:
    """The run root is a writable directory, or can be made one: said before anything starts."""
    missing = list(itertools.takewhile(lambda p: not p.exists() and p != p.parent, (root, *root.parents)))
    existing = root.parents[len(missing) - 1] if missing else root
    if not existing.is_dir():
        raise ArtifactError(f"run_root {root}: {existing} is a file, not a directory")
    if missing:  # made and removed again: permissions alone do not tell (root may write where nobody can create)
        try:
            root.mkdir(parents=True)
        except OSError as e:
            raise ArtifactError(f"run_root {root}: cannot create it ({e.strerror})") from None
        for made in missing:
            made.rmdir()
    elif not os.access(root, os.W_OK | os.X_OK):
        raise ArtifactError(f"run_root {root}: not writable")


def _preflight(config: PipelineConfig) -> tuple[Catalog, Plan]:
    """Read-only checks before any flow starts: the run root can be written, and every artifact
    the catalog already has is intact (its fingerprint checked: a damaged file is named here,
    not halfway through a run)."""
    from flows.plan import plan

    _check_run_root(Path(config.run_root))
    catalog = config.open_catalog()
    p = plan(config, catalog)
    for item in p.values():
        if (record := catalog.find(item.id)) is not None:
            integrity.check(record, catalog.resolve(record), catalog.root)
    return catalog, p


def cmd_run(args: argparse.Namespace) -> int:
    from flows.config import load_config
    from flows.pipeline import pipeline

    config = load_config(args.config, args.set)
    _preflight(config)
    result = pipeline(config)
    root = Path(config.run_root).resolve()
    text = (root / "report.md").read_text()
    # The first two tables: every model's scores, then the student against the experts and the baseline.
    tables = [block for block in text.split("\n\n") if block.startswith("|")][:2]
    print("\n" + "\n\n".join(tables))
    print(f"\nreport:   {root / 'report.md'}  (figures beside it; artifact {result['report']})")
    print(f"catalog:  {root / 'catalog.sqlite'}")
    print("next:")
    print(f"  distillery ls --root {config.run_root}                   # every artifact: id, stage, domain, size")
    print(f"  distillery lineage <id> --root {config.run_root}         # where a dataset or model came from, down to the raw tasks")
    print(f"  distillery show <id> --root {config.run_root}            # schema and first rows")
    print("  make ui                                                # the Prefect UI: run the pipeline or one stage from a form")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from flows import base, baseline, distill, dsa_warmup, evaluate, generate, index, mixed_rl, mixture, opd, prepare, report, train_expert, verify
    from flows.artifacts import require
    from flows.config import load_config
    from flows.pipeline import with_retries
    from flows.plan import inputs, outputs
    from flows.stages import DOMAIN_STAGES, STAGES

    config = load_config(args.config, args.set)
    if args.name not in STAGES:
        raise ValueError(f"unknown stage {args.name!r} (stages: {', '.join(STAGES)})")
    # The stages that start from the user's data take an optional --domain (every domain they apply to without one).
    from_data = args.name in ("index", "prepare")
    needs_domain = args.name in DOMAIN_STAGES and not from_data
    if needs_domain and not args.domain:
        raise ValueError(f"stage {args.name!r} needs --domain (one of: {', '.join(config.domains)})")
    if args.domain and args.name not in DOMAIN_STAGES:
        raise ValueError(f"stage {args.name!r} takes no --domain")
    catalog, p = _preflight(config)
    domains = [args.domain] if args.domain else STAGES[args.name].domains(config)
    if not domains:
        raise ValueError(f"stage {args.name!r} has nothing to do in this config: it runs when {STAGES[args.name].applies_when}")
    for d in domains:
        outputs(p, args.name, d)  # an unknown domain is an error naming it
        if not from_data:
            for item in inputs(p, config, args.name, d).values():
                require(catalog, item)
    modules = {"index": index, "prepare": prepare, "base": base, "train_expert": train_expert, "dsa_warmup": dsa_warmup, "generate": generate,
               "verify": verify, "mixture": mixture, "distill": distill, "opd": opd, "mixed_rl": mixed_rl, "baseline": baseline, "evaluate": evaluate, "report": report}
    stage = with_retries(getattr(modules[args.name], args.name), config)
    if from_data:
        print(stage(config, args.domain))
    elif args.name in DOMAIN_STAGES:
        print(stage(args.domain, config))
    else:
        print(stage(config))
    return 0


def _where(args: argparse.Namespace) -> tuple[Path, str | None]:
    """(run root, catalog url) of a command that reads a run root: --root and --catalog, else the config's.
    A run root named on its own uses its own catalog file."""
    if args.root and not args.config:
        return Path(args.root), args.catalog
    from flows.config import load_config

    config = load_config(args.config)
    return Path(args.root or config.run_root), args.catalog or config.catalog.url


def _root(args: argparse.Namespace) -> Catalog:
    catalog = Catalog(*_where(args))
    if not catalog.exists():
        raise ArtifactError(f"no catalog at {catalog.where}: run the pipeline first, or pass --root")
    return catalog


def cmd_ls(args: argparse.Namespace) -> int:
    """Every run root's artifacts in the catalog (one root's, unless several share it), oldest first."""
    rows = _root(args).rows(stage=args.stage, domain=args.domain, every_root=True)
    roots = sorted({root for root, _ in rows})
    print(f"{'id':16}  {'kind':10}  {'stage':12}  {'domain':7}  {'name':11}  {'size':>12}  created" + ("  run root" if len(roots) > 1 else ""))
    for root, r in rows:
        size = f"{r.rows} rows" if r.rows is not None else f"{r.bytes} B"
        print(f"{r.id:16}  {r.kind:10}  {r.stage:12}  {r.domain or '-':7}  {r.name:11}  {size:>12}  {r.created_at}" + (f"  {root}" if len(roots) > 1 else ""))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    catalog = _root(args)
    record = catalog.get(args.id)
    path = catalog.resolve(record)
    if not path.exists():
        raise ArtifactError(f"artifact {record.id}: its files are gone from {path} (the lineage is still there: "
                            f"`distillery lineage {record.id}`; `distillery doctor --repair` drops the row, and a run redoes it)")
    catalog.find(record.id)  # its own lineage record readable and the same artifact
    integrity.check(record, path, catalog.root)
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
    if args.format in PICTURE_FORMATS:
        out = Path(args.out or f"lineage-{tree['record']['id']}.{args.format}")
        tmp = temporary(out)
        tmp.write_bytes(render_picture(tree, args.format))
        os.replace(tmp, out)
        print(out)
        return 0
    print({"tree": render_tree, "json": render_json, "mermaid": render_mermaid}[args.format](tree))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Exit 0 when the run root is healthy (after repair, if asked), 1 when problems remain."""
    root, url = _where(args)
    report = doctor(root, repair=args.repair, url=url)
    for line in [*map(str, report.problems), *report.actions]:
        print(line)
    if args.repair and report.problems:
        report = doctor(root, url=url)
        for problem in report.problems:
            print(f"still: {problem}")
    for work, size in report.work.items():
        print(f"work in progress: {work} ({size / 2**20:,.1f} MiB; a run of that stage goes on from it, or delete it if you abandoned that run)")
    if not report.problems:
        print(f"no problems: {report.checked} artifacts checked in {root}")
        return 0
    print(f"{len(report.problems)} problems in {root}: `distillery doctor --root {root} --repair` mends them "
          f"(damaged files go to {root / QUARANTINE}; only the work directories of saved artifacts are deleted)")
    return 1


class _StageHelp(argparse.Action):
    """`distillery stage --help`: the stage names come from flows.stages, imported only when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object, option_string: str | None = None) -> None:
        from flows.stages import STAGES

        parser.epilog = f"stages: {', '.join(STAGES)}"
        parser.print_help()
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillery", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not only its one line")
    sub = parser.add_subparsers(dest="command", required=True)

    def config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=None, help="pipeline YAML (default: configs/tiny.yaml)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting, e.g. distill.steps=800")

    def root_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root", default=None, help="run root (default: the config's run_root)")
        p.add_argument("--config", default=None, help="pipeline YAML whose run_root (and catalog) to read")
        p.add_argument("--catalog", default=None, metavar="URL", help="the catalog, when not the run root's own file: "
                       "sqlite:///<file> or postgresql://user@host:port/database")

    run = sub.add_parser("run", help="run the whole pipeline")
    config_args(run)
    run.set_defaults(func=cmd_run)
    stage = sub.add_parser("stage", help="run one stage from inputs already in the catalog", add_help=False)
    stage.add_argument("-h", "--help", action=_StageHelp, nargs=0, help="show this help message (with the stage names) and exit")
    stage.add_argument("name", help="a stage of the pipeline (--help lists them)")
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
    lineage.add_argument("--format", choices=["tree", "json", "mermaid", *PICTURE_FORMATS], default="tree")
    lineage.add_argument("--out", default=None, help="where an svg or png goes (default: lineage-<id>.<format> here)")
    lineage.set_defaults(func=cmd_lineage)
    check = sub.add_parser("doctor", help="check every artifact against the catalog and the catalog against the files")
    root_args(check)
    check.add_argument("--repair", action="store_true",
                       help="quarantine damaged files, drop their rows, rebuild a missing or corrupt catalog from the artifacts")
    check.set_defaults(func=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ArtifactError, ValueError) as e:  # flows.config's ConfigError is a ValueError
        if args.debug:
            raise
        print(f"distillery: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
