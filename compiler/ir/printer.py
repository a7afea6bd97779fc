"""The IR's text form: one value per line, deterministic, and parsed back by `parse`.

    graph loss
      in_tree ({'W1': *, 'b1': *}, *)
      out_tree *
      %params.W1 = input : f32[784,256] param
      %x = input : f32[64,784] data
      %0 = matmul(%x, %params.W1) : f32[64,256]  # mlp.py:12
      %1 = sum(%0) {axes=(0, 1), keepdims=False} : f32[]  # mlp.py:14
      return %1

Inputs are named after their `name` attribute and printed first, in `graph.inputs` order;
every other value follows in `graph.topo_order()`, numbered %0, %1, ... unless the caller
passes a name hint. Attributes are sorted by name and written as Python literals whose
floats round-trip bit-exactly, so equal graphs print equal text and golden files diff well.

A Graph-valued attribute (the body of a `fixed_point`) is written `graph('cell')` and the
body follows as its own section, after a blank line:

      %1 = fixed_point(%0, %x, %W) {body=graph('cell'), max_iter=100, tol=1e-06} : f32[3,4]
      ...

    graph cell
      in_tree (*, *, *)
      out_tree *
      %z = input : f32[3,4] data
      ...

Each body is printed once, nested bodies too, in the order the text first refers to them;
bodies that would print identically (a backward graph builds a fresh adjoint body per
use) share one section and parse back as one Graph. Section names are unique: a different
body whose name is taken by an earlier section (or the main graph) gets a suffix, `cell_1`,
and parses back under that name.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import networkx as nx
import numpy as np

from compiler.errors import PullbackError
from compiler.ir.graph import INPUT_KINDS, Graph, Node
from runtime.pytree import TreeError, treedef_to_text

NAME = re.compile(r"[\w.]+")  # a value name that needs no quoting (after the %)
_PLAIN_GRAPH_NAME = re.compile(r"[^\s'\"#]\S*")


def dump(graph: Graph, names: Mapping[int, str] | None = None) -> str:
    """The text of `graph`. `names` maps value ids to readable name hints (e.g. "d.x").

    Hints are only hints: characters other than word characters and dots become "_", a
    clash gets a suffix, and hints for graph inputs are ignored (inputs keep their names).
    They apply to the main graph, not to bodies.
    """
    sections = graph_sections(graph)
    printed = {id(g): (g, label) for g, label in sections.values()}  # each shared section once
    return "\n".join(_section(g, label, names if g is graph else None, sections) for g, label in printed.values())


def graph_sections(graph: Graph) -> dict[int, tuple[Graph, str]]:
    """id(g) -> (section graph, section name) for `graph` and every body it holds, nested too.

    Insertion order is text order: `graph` first, then bodies as the text first refers to
    them. Bodies that would print the same (same name, same text, same bodies inside) share
    the first one's section: a backward graph builds a fresh adjoint body per use.
    """
    found = [graph]  # every graph by identity, breadth first: the order the text refers to them
    seen = {id(graph)}
    for current in found:  # grows while it is walked
        for body in _bodies_of(current):
            if id(body) not in seen:
                seen.add(id(body))
                found.append(body)
    keys: dict[int, str] = {id(graph): "main"}
    classes: dict[str, str] = {}

    def key(body: Graph) -> str:  # bodies nest only a few deep, so recursion is fine
        if id(body) not in keys:
            keys[id(body)] = f"@{id(body)}"  # while keying: a (broken) body inside itself is only itself
            refs = {id(b): (b, key(b)) for b in _bodies_of(body)}
            keys[id(body)] = classes.setdefault(_section(body, body.name, None, refs), f"#{len(classes)}")
        return keys[id(body)]

    sections: dict[int, tuple[Graph, str]] = {id(graph): (graph, graph.name)}
    first: dict[str, tuple[Graph, str]] = {}
    used = {graph.name}
    for body in found[1:]:
        k = key(body)
        if k not in first:
            label, suffix = body.name, 1
            while label in used:
                label, suffix = f"{body.name}_{suffix}", suffix + 1
            used.add(label)
            first[k] = (body, label)
        sections[id(body)] = first[k]
    return sections


def _bodies_of(graph: Graph) -> list[Graph]:
    """The graphs held by `graph`'s attributes, in text order (repeats included)."""
    result = []
    for node_id in print_order(graph):
        attrs = graph.node(node_id).attrs
        for key in sorted(attrs):
            result += graphs_in(attrs[key])
    return result


def graphs_in(value: Any) -> list[Graph]:
    """The Graphs in an attribute value (itself, or inside tuples and lists)."""
    if isinstance(value, Graph):
        return [value]
    if isinstance(value, (tuple, list)):
        return [g for item in value for g in graphs_in(item)]
    return []


def print_order(graph: Graph) -> list[int]:
    """graph.topo_order(), or id order when the graph is broken (a cycle) so it still prints."""
    for node_id, data in graph.nx.nodes(data=True):
        if not isinstance(data.get("node"), Node):
            raise PullbackError(f"cannot print graph {graph.name!r}: %{node_id} carries no op")
    for input_id in graph.inputs:
        if input_id not in graph.nx or not isinstance(graph.node(input_id).attrs.get("name"), str):
            raise PullbackError(f"cannot print graph {graph.name!r}: input %{input_id} is not a named input node")
    try:
        return graph.topo_order()
    except nx.NetworkXUnfeasible:
        return sorted(graph.nx)


def value_names(graph: Graph, hints: Mapping[int, str] | None = None, order: list[int] | None = None) -> dict[int, str]:
    """The unique text name (without %) of every value: input names, hints, then numbers."""
    names: dict[int, str] = {}
    used: set[str] = set()
    for input_id in graph.inputs:
        names[input_id] = graph.node(input_id).attrs["name"]
        used.add(names[input_id])
    counter = 0
    for node_id in order if order is not None else print_order(graph):
        if node_id in names:
            continue
        hint = re.sub(r"[^\w.]", "_", str(hints[node_id])) if hints and hints.get(node_id) else ""
        if hint:
            name, suffix = hint, 1
            while name in used:
                name, suffix = f"{hint}_{suffix}", suffix + 1
        else:
            while str(counter) in used:
                counter += 1
            name = str(counter)
        names[node_id] = name
        used.add(name)
    return names


def format_name(name: str) -> str:
    return "%" + (name if NAME.fullmatch(name) else repr(name))


def format_value(value: Any, sections: Mapping[int, tuple[Graph, str]] | None = None) -> str:
    """An attribute value as a Python literal that `parse` reads back exactly.

    A Graph is written graph('name'), named by `sections` (see graph_sections) when given.
    """
    if isinstance(value, Graph):
        label = sections[id(value)][1] if sections and id(value) in sections else value.name
        return f"graph({label!r})"
    if value is None or isinstance(value, (bool, np.bool_)):
        return repr(None if value is None else bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _float_text(float(value))
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, tuple):
        items = [format_value(v, sections) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v, sections) for v in value) + "]"
    if isinstance(value, np.ndarray):
        return _array_text(value)
    raise PullbackError(f"cannot print attribute value {value!r} of type {type(value).__name__}")


def format_attrs(attrs: Mapping[str, Any], sections: Mapping[int, tuple[Graph, str]] | None = None) -> str:
    return ", ".join(f"{key}={format_value(attrs[key], sections)}" for key in sorted(attrs))


def format_loc(loc: str | None) -> str:
    """'  # loc', quoted as a Python string when it would not read back verbatim."""
    if not loc:
        return ""
    plain = loc.isprintable() and loc == loc.strip() and loc[0] not in "'\""
    return "  # " + (loc if plain else repr(loc))


# ---------------------------------------------------------------- helpers
def _section(graph: Graph, label: str, names: Mapping[int, str] | None,
             sections: Mapping[int, tuple[Graph, str]]) -> str:
    order = print_order(graph)
    value = value_names(graph, names, order)
    lines = [f"graph {_graph_name(label)}",
             f"  in_tree {_tree_text(graph, 'in_tree')}",
             f"  out_tree {_tree_text(graph, 'out_tree')}"]
    inputs = set(graph.inputs)
    for node_id in graph.inputs:
        lines.append("  " + _input_line(graph, node_id, value, sections))
    for node_id in order:
        if node_id not in inputs:
            lines.append("  " + _op_line(graph.node(node_id), node_id, value, sections))
    outputs = ", ".join(_ref(value, o) for o in graph.outputs)
    lines.append(f"  return {outputs}" if outputs else "  return")
    return "\n".join(lines) + "\n"


def _graph_name(name: str) -> str:
    return name if _PLAIN_GRAPH_NAME.fullmatch(name) and name.isprintable() else repr(name)


def _tree_text(graph: Graph, which: str) -> str:
    try:
        return treedef_to_text(getattr(graph, which))
    except TreeError as exc:
        raise PullbackError(f"cannot print graph {graph.name!r}: {which} {exc}") from None


def _ref(value: dict[int, str], node_id: int) -> str:
    return format_name(value[node_id]) if node_id in value else f"%<undefined {node_id}>"


def _input_line(graph: Graph, node_id: int, value: dict[int, str], sections: Mapping[int, tuple[Graph, str]]) -> str:
    node = graph.node(node_id)
    if node.op != "input" or set(node.attrs) != {"name", "kind"} or node.attrs["kind"] not in INPUT_KINDS:
        return _op_line(node, node_id, value, sections)  # broken; printed in full so the parser can name the problem
    return f"{format_name(value[node_id])} = input : {node.type} {node.attrs['kind']}{format_loc(node.loc)}"


def _op_line(node: Node, node_id: int, value: dict[int, str], sections: Mapping[int, tuple[Graph, str]]) -> str:
    operands = ", ".join(_ref(value, o) for o in node.operands)
    attrs = f" {{{format_attrs(node.attrs, sections)}}}" if node.attrs else ""
    return f"{format_name(value[node_id])} = {node.op}({operands}){attrs} : {node.type}{format_loc(node.loc)}"


def _float_text(x: float) -> str:
    if math.isnan(x):
        return "-nan" if math.copysign(1.0, x) < 0 else "nan"
    return repr(x)  # 'inf', '-inf', and the shortest text that reads back as the same double


def _float32_text(x: np.float32) -> str:
    """The shortest float32 text, unless reading it back as a double then rounding differs."""
    if not np.isfinite(x):
        return _float_text(float(x))
    text = str(x)
    if np.float32(float(text)).view(np.uint32) == x.view(np.uint32):
        return text
    return repr(float(x))


def _array_text(array: np.ndarray) -> str:
    kind = array.dtype.kind
    flat = array.ravel()
    if kind == "b":
        items = ["True" if v else "False" for v in flat.tolist()]
    elif kind in "iu":
        items = [str(v) for v in flat.tolist()]
    elif kind == "f" and array.dtype == np.float32:
        items = [_float32_text(v) for v in flat]
    elif kind == "f" and array.dtype.itemsize <= 8:
        items = [_float_text(v) for v in flat.astype(np.float64).tolist()]
    else:
        raise PullbackError(f"cannot print a numpy array of dtype {array.dtype}")
    dtype = f"dtype={array.dtype.name!r}"
    if array.size == 0:
        return f"array([], {dtype}, shape={format_value(array.shape)})"
    it = iter(items)

    def nest(shape: tuple[int, ...]) -> str:
        if not shape:
            return next(it)
        return "[" + ", ".join(nest(shape[1:]) for _ in range(shape[0])) + "]"

    return f"array({nest(array.shape)}, {dtype})"
