"""Render an artifact's ancestry (from `Catalog.ancestry`) as a tree, JSON, or a Mermaid graph."""

from __future__ import annotations

import json
from typing import Any


def _label(record: dict[str, Any]) -> str:
    where = "/".join(x for x in (record["stage"], record["domain"], record["name"]) if x)
    size = f"{record['rows']} rows" if record.get("rows") is not None else f"{record.get('bytes') or 0} bytes"
    return f"{where} [{record['kind']} {record['id']}] {size}"


def render_tree(tree: dict[str, Any]) -> str:
    lines = [_label(tree["record"])]

    def walk(node: dict[str, Any], prefix: str) -> None:
        for i, parent in enumerate(node["parents"]):
            last = i == len(node["parents"]) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{_label(parent['record'])}")
            walk(parent, prefix + ("    " if last else "│   "))

    walk(tree, "")
    return "\n".join(lines)


def render_json(tree: dict[str, Any]) -> str:
    return json.dumps(tree, indent=2)


def render_mermaid(tree: dict[str, Any]) -> str:
    nodes: dict[str, str] = {}
    edges: set[tuple[str, str]] = set()

    def walk(node: dict[str, Any]) -> None:
        record = node["record"]
        nodes[record["id"]] = _label(record).replace('"', "'")
        for parent in node["parents"]:
            edges.add((parent["record"]["id"], record["id"]))
            walk(parent)

    walk(tree)
    lines = ["graph TD"]
    lines += [f'    a{i}["{label}"]' for i, label in sorted(nodes.items())]
    lines += [f"    a{src} --> a{dst}" for src, dst in sorted(edges)]
    return "\n".join(lines)
