"""Graphviz DOT export: `dot -Tsvg` draws the graph (no graphviz needed to write the text).

One box per op labelled with its value name, op and short attributes; inputs are filled
(params and data in different colours), outputs are separate house-shaped nodes. Each
edge carries the operand's type and, for ops with several operands, its operand index.
Values are named as in `dump`, so the picture and the text can be read side by side.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from compiler.ir.graph import Graph
from compiler.ir.printer import format_loc, format_name, format_value, print_order, value_names

_MAX_ATTR = 32  # characters of one attribute value before it is cut short


def to_dot(graph: Graph, names: Mapping[int, str] | None = None) -> str:
    """DOT source for `graph`; deterministic, so it diffs like the text form."""
    order = print_order(graph)
    value = value_names(graph, names, order)
    inputs = set(graph.inputs)
    lines = [f"digraph {quote(graph.name)} {{",
             '  node [shape=box, style=rounded, fontname="monospace"];',
             '  edge [fontname="monospace", fontsize=10];']
    missing: set[int] = set()
    for node_id in order:
        node = graph.node(node_id)
        name = format_name(value[node_id])
        tooltip = quote(f"{name} : {node.type}{format_loc(node.loc)}")
        if node_id in inputs:
            kind = node.attrs.get("kind")
            colour = "lightblue" if kind == "param" else "lightyellow"
            label = f"{name}\n{node.type} {kind}"
            lines.append(f"  v{node_id} [label={quote(label)}, shape=box, style=filled, "
                         f"fillcolor={colour}, tooltip={tooltip}];")
            continue
        attrs = short_attrs(node.attrs)
        label = f"{name} = {node.op}" + (f"\n{attrs}" if attrs else "")
        lines.append(f"  v{node_id} [label={quote(label)}, tooltip={tooltip}];")
        for index, operand in enumerate(node.operands):
            if operand not in graph:
                missing.add(operand)
                lines.append(f"  missing{operand} -> v{node_id} [label={quote(f'#{index}')}, color=red];")
                continue
            label = str(graph.type(operand))
            if len(node.operands) > 1:
                label = f"#{index} {label}"
            lines.append(f"  v{operand} -> v{node_id} [label={quote(label)}];")
    for operand in sorted(missing):
        lines.append(f"  missing{operand} [label={quote(f'undefined %{operand}')}, color=red, fontcolor=red];")
    for index, output in enumerate(graph.outputs):
        lines.append(f"  out{index} [label={quote(f'output {index}')}, shape=house, style=filled, "
                     f"fillcolor=palegreen];")
        if output in graph:
            lines.append(f"  v{output} -> out{index} [label={quote(str(graph.type(output)))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def short_attrs(attrs: Mapping[str, Any]) -> str:
    """`key=value` pairs, arrays summarized by type and long values cut short."""
    parts = []
    for key in sorted(attrs):
        value = attrs[key]
        if isinstance(value, np.ndarray):
            text = f"<{value.dtype.name}{list(value.shape)}>".replace(" ", "")
        else:
            try:
                text = format_value(value)
            except Exception:  # noqa: BLE001 - a picture of a broken graph is still useful
                text = f"<{type(value).__name__}>"
        if len(text) > _MAX_ATTR:
            text = text[:_MAX_ATTR - 3] + "..."
        parts.append(f"{key}={text}")
    return ", ".join(parts)


def quote(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as centred breaks."""
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")
    return f'"{escaped}"'
