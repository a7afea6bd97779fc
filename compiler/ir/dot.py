"""Graphviz DOT export: `dot -Tsvg` draws the graph (no graphviz needed to write the text).

One box per op labelled with its value name, op and short attributes; inputs are filled
(params and data in different colours), outputs are separate house-shaped nodes. Each
edge carries the operand's type and, for ops with several operands, its operand index.
Values are named as in `dump`, so the picture and the text can be read side by side.

A body (a Graph-valued attribute, as of `fixed_point`) is drawn once, as a dashed cluster
labelled with its section name from `dump` (nested bodies are clusters of their own, not
drawn inside their user); the op shows `body=graph('name')` and a dashed edge runs from
the cluster to each op that uses it. Body node ids carry a prefix: b1_v3, b1_out0.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from compiler.ir.graph import Graph
from compiler.ir.printer import format_loc, format_name, format_value, graph_sections, graphs_in, print_order, \
    value_names

_MAX_ATTR = 32  # characters of one attribute value before it is cut short


def to_dot(graph: Graph, names: Mapping[int, str] | None = None) -> str:
    """DOT source for `graph`; deterministic, so it diffs like the text form."""
    sections = graph_sections(graph)
    drawn = {id(g): (g, label) for g, label in sections.values()}  # each shared section once
    numbers = {key: index for index, key in enumerate(drawn)}
    prefixes = {key: "" if numbers[id(g)] == 0 else f"b{numbers[id(g)]}_" for key, (g, _) in sections.items()}
    lines = [f"digraph {quote(graph.name)} {{"]
    if len(drawn) > 1:
        lines.append("  graph [compound=true];")  # lets an edge start at a cluster's border (ltail)
    lines += ['  node [shape=box, style=rounded, fontname="monospace"];',
              '  edge [fontname="monospace", fontsize=10];']
    uses: list[str] = []
    for key, (g, label) in drawn.items():
        prefix = prefixes[key]
        body_lines = _graph_lines(g, prefix, names if g is graph else None, sections, prefixes, uses)
        if not prefix:
            lines += body_lines
            continue
        cluster = f"cluster_{prefix[:-1]}"
        lines.append(f"  subgraph {cluster} {{")
        lines.append(f"    graph [label={quote(f'body {label}')}, style=dashed, fontname=\"monospace\"];")
        lines += ["  " + line for line in body_lines]
        lines.append("  }")
    lines += uses
    lines.append("}")
    return "\n".join(lines) + "\n"


def _graph_lines(graph: Graph, prefix: str, names: Mapping[int, str] | None, sections: Mapping[int, tuple[Graph, str]],
                 prefixes: Mapping[int, str], uses: list[str]) -> list[str]:
    """The nodes and edges of one graph, ids prefixed; edges from bodies to their users go to `uses`."""
    order = print_order(graph)
    value = value_names(graph, names, order)
    inputs = set(graph.inputs)
    lines: list[str] = []
    missing: set[int] = set()
    for node_id in order:
        node = graph.node(node_id)
        name = format_name(value[node_id])
        tooltip = quote(f"{name} : {node.type}{format_loc(node.loc)}")
        v = f"{prefix}v{node_id}"
        if node_id in inputs:
            kind = node.attrs.get("kind")
            colour = "lightblue" if kind == "param" else "lightyellow"
            label = f"{name}\n{node.type} {kind}"
            lines.append(f"  {v} [label={quote(label)}, shape=box, style=filled, "
                         f"fillcolor={colour}, tooltip={tooltip}];")
            continue
        attrs = short_attrs(node.attrs, sections)
        label = f"{name} = {node.op}" + (f"\n{attrs}" if attrs else "")
        lines.append(f"  {v} [label={quote(label)}, tooltip={tooltip}];")
        for index, operand in enumerate(node.operands):
            if operand not in graph:
                missing.add(operand)
                lines.append(f"  {prefix}missing{operand} -> {v} [label={quote(f'#{index}')}, color=red];")
                continue
            label = str(graph.type(operand))
            if len(node.operands) > 1:
                label = f"#{index} {label}"
            lines.append(f"  {prefix}v{operand} -> {v} [label={quote(label)}];")
        for key in sorted(node.attrs):
            for body in graphs_in(node.attrs[key]):
                other = prefixes[id(body)]
                if not other:  # a body holding its enclosing graph (broken): there is no cluster to point from
                    continue
                # clipped at the cluster's border, unless the op is inside it (a broken body holding itself)
                tail = f"ltail=cluster_{other[:-1]}, " if other != prefix else ""
                uses.append(f"  {_anchor(sections[id(body)][0], other)} -> {v} [{tail}"
                            f"label={quote(key)}, style=dashed, arrowhead=empty];")
    for operand in sorted(missing):
        lines.append(f"  {prefix}missing{operand} [label={quote(f'undefined %{operand}')}, color=red, fontcolor=red];")
    for index, output in enumerate(graph.outputs):
        lines.append(f"  {prefix}out{index} [label={quote(f'output {index}')}, shape=house, style=filled, "
                     f"fillcolor=palegreen];")
        if output in graph:
            lines.append(f"  {prefix}v{output} -> {prefix}out{index} [label={quote(str(graph.type(output)))}];")
    if not order and not graph.outputs:
        lines.append(f"  {prefix}empty [label=\"(empty)\", shape=plaintext];")  # an empty cluster is not drawn
    return lines


def _anchor(body: Graph, prefix: str) -> str:
    """A node inside the body's cluster for edges leaving it: its first output, else its first node."""
    if body.outputs:
        return f"{prefix}out0"
    return f"{prefix}v{print_order(body)[0]}" if len(body) else f"{prefix}empty"


def short_attrs(attrs: Mapping[str, Any], sections: Mapping[int, tuple[Graph, str]] | None = None) -> str:
    """`key=value` pairs, arrays summarized by type and long values cut short (a body's name never is)."""
    parts = []
    for key in sorted(attrs):
        value = attrs[key]
        if isinstance(value, np.ndarray):
            text = f"<{value.dtype.name}{list(value.shape)}>".replace(" ", "")
        else:
            try:
                text = format_value(value, sections)
            except Exception:  # noqa: BLE001 - a picture of a broken graph is still useful
                text = f"<{type(value).__name__}>"
        if len(text) > _MAX_ATTR and not isinstance(value, Graph):
            text = text[:_MAX_ATTR - 3] + "..."
        parts.append(f"{key}={text}")
    return ", ".join(parts)


def quote(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as centred breaks."""
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")
    return f'"{escaped}"'
