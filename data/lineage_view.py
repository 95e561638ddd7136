"""Render an artifact's ancestry (from `Catalog.ancestry`) as a tree, JSON, a Mermaid graph, or a picture."""

from __future__ import annotations

import io
import json
from typing import Any


def pretrained_source(record: dict[str, Any]) -> str | None:
    """"<hub id or directory>[@revision]" of a checkpoint adopted from a user's pretrained model, else None."""
    metrics = record.get("metrics") or {}
    if not metrics.get("pretrained"):
        return None
    return metrics["pretrained"] + (f"@{metrics['revision']}" if metrics.get("revision") else "")


def _label(record: dict[str, Any]) -> str:
    where = "/".join(x for x in (record["stage"], record["domain"], record["name"]) if x)
    size = f"{record['rows']} rows" if record.get("rows") is not None else f"{record.get('bytes') or 0} bytes"
    source = pretrained_source(record)
    return f"{where} [{record['kind']} {record['id']}] {size}" + (f", adopted from pretrained {source}" if source else "")


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


PICTURE_FORMATS = ("svg", "png")
_COLORS = {"dataset": "#dbe9f6", "checkpoint": "#fde7c8", "report": "#e2f0d9", "index": "#ece2f4"}


def _graph(tree: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], set[tuple[str, str]]]:
    """Unique records by id, and (parent id, child id) edges: an ancestry tree repeats shared parents."""
    records: dict[str, dict[str, Any]] = {}
    edges: set[tuple[str, str]] = set()

    def walk(node: dict[str, Any]) -> None:
        records[node["record"]["id"]] = node["record"]
        for parent in node["parents"]:
            edges.add((parent["record"]["id"], node["record"]["id"]))
            walk(parent)

    walk(tree)
    return records, edges


def _layers(records: dict[str, dict[str, Any]], edges: set[tuple[str, str]]) -> list[list[str]]:
    """Raw sources in the first layer, each artifact one layer below its deepest parent; within a
    layer, ordered by the mean position of its parents (fewer crossing arrows)."""
    parents = {i: sorted(p for p, c in edges if c == i) for i in records}
    depth: dict[str, int] = {}

    def depth_of(i: str) -> int:
        if i not in depth:
            depth[i] = 1 + max((depth_of(p) for p in parents[i]), default=-1)
        return depth[i]

    layers: list[list[str]] = [[] for _ in range(max(map(depth_of, records)) + 1)]
    for i in sorted(records, key=lambda i: (records[i]["stage"], records[i]["domain"] or "", records[i]["name"])):
        layers[depth_of(i)].append(i)
    position: dict[str, float] = {}
    for layer in layers:
        layer.sort(key=lambda i: sum(position[p] for p in parents[i]) / len(parents[i]) if parents[i] else 0.0)
        position.update({i: x - (len(layer) - 1) / 2 for x, i in enumerate(layer)})
    return layers


def render_picture(tree: dict[str, Any], fmt: str) -> bytes:
    """The ancestry as a layered graph (SVG or PNG): one box per artifact, coloured by kind, an
    arrow from each parent to its child, the artifact asked about at the bottom."""
    from matplotlib.figure import Figure  # imported here: the text formats do not need it

    if fmt not in PICTURE_FORMATS:
        raise ValueError(f"picture format {fmt!r}: one of {', '.join(PICTURE_FORMATS)}")
    records, edges = _graph(tree)
    layers = _layers(records, edges)
    xy = {i: (2.4 * (x - (len(layer) - 1) / 2), -1.3 * y) for y, layer in enumerate(layers) for x, i in enumerate(layer)}
    width = max(map(len, layers))
    fig = Figure(figsize=(max(4.0, 2.4 * width), max(2.0, 1.3 * len(layers))))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(-1.2 * width - 0.2, 1.2 * width + 0.2)
    ax.set_ylim(-1.3 * (len(layers) - 1) - 0.6, 0.6)
    for i, record in records.items():
        where = "/".join(x for x in (record["stage"], record["domain"], record["name"]) if x)
        size = f"{record['rows']} rows" if record.get("rows") is not None else record["kind"]
        source = pretrained_source(record)
        ax.text(*xy[i], f"{where}\n{i}  {size}" + (f"\nfrom {source}" if source else ""), ha="center", va="center", fontsize=7, gid=f"artifact-{i}",
                bbox={"boxstyle": "round,pad=0.4", "fc": _COLORS.get(record["kind"], "white"), "ec": "#555555", "lw": 0.6})
    for parent, child in sorted(edges):
        ax.annotate("", xy=xy[child], xytext=xy[parent],
                    arrowprops={"arrowstyle": "->", "color": "#777777", "lw": 0.6, "shrinkA": 14, "shrinkB": 14})
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=90)
    return buffer.getvalue()
