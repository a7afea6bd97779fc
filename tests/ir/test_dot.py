"""DOT export: structure, labels, escaping and determinism (checked without graphviz; with it when installed)."""
import re
import shutil
import subprocess

import numpy as np
import pytest

import compiler
from compiler import Spec, TensorType, ops
from compiler.ir.dot import quote, short_attrs, to_dot
from compiler.ir.graph import Graph, Node
from runtime.pytree import LEAF

_TOKEN = re.compile(r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<arrow>->)|(?P<id>[A-Za-z_][\w]*|-?\d+(?:\.\d+)?)'
                    r'|(?P<punct>[{}\[\];,=]))')


def tokens(dot: str) -> list[tuple[str, str]]:
    result, pos = [], 0
    dot = dot.rstrip()
    while pos < len(dot):
        match = _TOKEN.match(dot, pos)
        assert match, f"cannot tokenize DOT at {dot[pos:pos + 40]!r}"
        kind = match.lastgroup
        result.append((kind, match.group(kind)))
        pos = match.end()
    return result


def parse_dot(dot: str, clusters: dict | None = None) -> tuple[str, dict[str, dict[str, str]],
                                                               list[tuple[str, str, dict[str, str]]]]:
    """A small DOT reader for what to_dot writes: (graph name, nodes, edges); asserts well-formedness.

    `clusters`, when given, is filled with {cluster id: (its graph attributes, the node ids declared in it)}.
    """
    toks = tokens(dot)
    assert toks[0] == ("id", "digraph") and toks[1][0] in ("string", "id") and toks[2] == ("punct", "{")
    assert toks[-1] == ("punct", "}")
    depth = 0
    for kind, value in toks:
        if kind == "punct" and value in "{}":
            depth += 1 if value == "{" else -1
            assert depth >= 0
    assert depth == 0
    body, nodes, edges, i = toks[3:-1], {}, [], 0
    clusters = {} if clusters is None else clusters
    inside: list[str] = []  # the subgraph being read

    def attr_list(i):
        attrs = {}
        assert body[i] == ("punct", "[")
        i += 1
        while body[i] != ("punct", "]"):
            key, eq, (kind, value) = body[i], body[i + 1], body[i + 2]
            assert key[0] == "id" and eq == ("punct", "=") and kind in ("id", "string")
            attrs[key[1]] = value
            i += 3
            if body[i] == ("punct", ","):
                i += 1
        return attrs, i + 1

    while i < len(body):
        kind, value = body[i]
        if (kind, value) == ("punct", "}"):
            assert inside, "unbalanced }"
            inside.pop()
            i += 1
            continue
        assert kind == "id", f"statement starts with {body[i]}"
        if value == "subgraph":
            assert not inside, "to_dot draws bodies as top-level clusters"
            assert body[i + 1][0] == "id" and body[i + 1][1].startswith("cluster_") and body[i + 2] == ("punct", "{")
            name = body[i + 1][1]
            assert name not in clusters, f"cluster {name} declared twice"
            clusters[name] = ({}, set())
            inside.append(name)
            i += 3
            continue
        if body[i + 1] == ("arrow", "->"):
            assert body[i + 2][0] == "id"
            target = body[i + 2][1]
            attrs, i = attr_list(i + 3)
            edges.append((value, target, attrs))
        else:
            attrs, i = attr_list(i + 1)
            if value == "graph":
                if inside:
                    clusters[inside[-1]][0].update(attrs)
            elif value not in ("node", "edge"):
                assert value not in nodes, f"node {value} declared twice"
                nodes[value] = attrs
                if inside:
                    clusters[inside[-1]][1].add(value)
        assert body[i] == ("punct", ";")
        i += 1
    assert not inside, "unclosed subgraph"
    return toks[1][1], nodes, edges


def check(dot: str, clusters: dict | None = None):
    clusters = {} if clusters is None else clusters
    name, nodes, edges = parse_dot(dot, clusters)
    for src, dst, attrs in edges:
        assert src in nodes and dst in nodes, f"edge {src} -> {dst} references an undeclared node"
        if "ltail" in attrs:
            assert src in clusters[attrs["ltail"]][1], "ltail names the cluster of the tail"
    return name, nodes, edges


def unquote(text: str) -> str:
    assert text.startswith('"') and text.endswith('"')
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text[1:-1])


def mlp(params, x):
    h = x @ params["W1"] + params["b1"]
    return ops.sum(h * h), h


@pytest.fixture
def graph():
    return compiler.trace(mlp, {"W1": Spec((4, 3)), "b1": Spec((3,))}, Spec((2, 4)))


def test_structure(graph):
    dot = to_dot(graph)
    name, nodes, edges = check(dot)
    assert unquote(name) == "mlp"
    assert len(nodes) == len(graph) + len(graph.outputs)
    operand_edges = [e for e in edges if not e[1].startswith("out")]
    assert len(operand_edges) == sum(len(node.operands) for _, node in graph.nodes())
    assert {e[1] for e in edges if e[1].startswith("out")} == {"out0", "out1"}


def test_labels(graph):
    _, nodes, edges = check(to_dot(graph))
    labels = {key: unquote(attrs["label"]) for key, attrs in nodes.items()}
    assert labels["v0"] == "%params.W1\nf32[4,3] param"
    assert labels["v2"] == "%x\nf32[2,4] data"
    assert nodes["v0"]["fillcolor"] != nodes["v2"]["fillcolor"]  # params and data look different
    assert labels["v3"] == "%0 = matmul"
    assert "sum" in labels["v6"] and "axes=(0, 1), keepdims=False" in labels["v6"]
    assert labels["out0"] == "output 0" and nodes["out0"]["shape"] == "house"
    edge_labels = sorted((src, dst, unquote(attrs["label"])) for src, dst, attrs in edges)
    assert ("v2", "v3", "#0 f32[2,4]") in edge_labels and ("v0", "v3", "#1 f32[4,3]") in edge_labels
    assert [e for e in edge_labels if e[1] == "v5"] == [("v4", "v5", "#0 f32[2,3]"), ("v4", "v5", "#1 f32[2,3]")]
    assert ("v5", "v6", "f32[2,3]") in edge_labels  # a single operand needs no index
    assert ("v4", "out1", "f32[2,3]") in edge_labels


def test_deterministic(graph):
    again = compiler.trace(mlp, {"W1": Spec((4, 3)), "b1": Spec((3,))}, Spec((2, 4)))
    assert to_dot(graph) == to_dot(again) == to_dot(compiler.parse(compiler.dump(graph)))


def test_names_are_escaped():
    graph = Graph('say "hi" \\ {now}\nplease')
    graph.capture_locations = False
    x = graph.add_input('x "quoted"', TensorType((2,), "float32"), loc='a "loc" \\n')
    k = graph.add_node("full", (), {"shape": (2,), "dtype": "float32", "value": 1.0}, loc="{brace")
    y = graph.add_node("add", (x, k), loc="}")
    graph.in_tree = (LEAF,)
    graph.set_outputs([y])
    dot = to_dot(graph)
    name, nodes, _ = check(dot)
    assert unquote(name) == 'say "hi" \\ {now}\nplease'
    assert unquote(nodes["v0"]["label"]).startswith("%'x \"quoted\"'")
    assert 'a "loc" \\n' in unquote(nodes["v0"]["tooltip"])


def test_quote():
    assert quote("plain") == '"plain"'
    assert quote('a"b') == '"a\\"b"'
    assert quote("a\\b") == '"a\\\\b"'
    assert quote("two\nlines") == '"two\\nlines"'
    assert quote("\\l") == '"\\\\l"'  # not graphviz's left-justify escape


def test_short_attrs():
    assert short_attrs({}) == ""
    assert short_attrs({"b": 1, "a": (0, 1)}) == "a=(0, 1), b=1"
    assert short_attrs({"value": np.zeros((784, 256), np.float32)}) == "value=<float32[784,256]>"
    long = short_attrs({"shape": tuple(range(40))})
    assert long.startswith("shape=(0, 1, 2") and long.endswith("...") and len(long) == len("shape=") + 32
    assert short_attrs({"odd": {"a": 1}}) == "odd=<dict>"


def test_large_constant_is_summarized():
    graph = compiler.trace(lambda x: x + ops.constant(np.arange(10000, dtype=np.float32)), Spec((10000,)))
    dot = to_dot(graph)
    check(dot)
    assert "value=<float32[10000]>" in dot and len(dot) < 2000


def test_backward_graph():
    backward = compiler.value_and_grad(compiler.trace(lambda p, x: ops.sum(ops.tanh(x @ p)), Spec((3, 2)),
                                                      Spec((4, 3))))
    _, nodes, edges = check(to_dot(backward))
    assert sum(1 for n in nodes if n.startswith("out")) == len(backward.outputs)


def test_name_hints(graph):
    dot = to_dot(graph, names={3: "d.x"})
    assert '"%d.x = matmul"' in dot


def test_broken_graphs_still_draw():
    graph = compiler.trace(lambda x: ops.exp(ops.neg(x)), Spec((2,)))
    neg, exp = [n for n in graph.nx if n not in graph.inputs]
    graph.replace_node(neg, operands=(exp,))  # a cycle
    check(to_dot(graph))
    graph = compiler.trace(lambda x: ops.exp(ops.neg(x)), Spec((2,)))
    graph.nx.nodes[exp]["node"] = Node("exp", (99,), TensorType((2,), "float32"))  # dangling operand
    graph.nx.remove_node(neg)
    graph.outputs.append(123)
    _, nodes, edges = check(to_dot(graph))
    assert "missing99" in nodes and unquote(nodes["missing99"]["label"]) == "undefined %99"
    assert "out1" in nodes and not any(dst == "out1" for _, dst, _ in edges)


# ------------------------------------------------------------------ bodies
def deq_grad():
    from compiler.ops.implicit import fixed_point
    from tests.ops.samples_implicit import cell

    def loss(w, x):
        return ops.sum(fixed_point(cell, ops.zeros_like(x), x, w, tol=1e-10) ** 2)
    return compiler.grad(compiler.trace(loss, Spec((4, 4)), Spec((3, 4))))


def test_bodies_are_dashed_clusters_linked_to_their_ops():
    graph = deq_grad()
    clusters = {}
    _, nodes, edges = check(to_dot(graph), clusters)
    assert to_dot(graph).splitlines()[1] == "  graph [compound=true];"
    assert {k: unquote(a["label"]) for k, (a, _) in clusters.items()} == {"cluster_b1": "body cell",
                                                                         "cluster_b2": "body adjoint_cell"}
    assert all(a["style"] == "dashed" for a, _ in clusters.values())
    cell = graph.node([n for n, node in graph.nodes() if node.op == "fixed_point"][0]).attrs["body"]
    assert clusters["cluster_b1"][1] == {f"b1_v{n}" for n in cell.nx} | {"b1_out0"}
    fixed = [f"v{n}" for n, node in graph.nodes() if node.op == "fixed_point"]  # forward, then adjoint
    links = sorted((attrs["ltail"], dst) for _, dst, attrs in edges if "ltail" in attrs)
    assert links == [("cluster_b1", fixed[0]), ("cluster_b2", fixed[1])]
    assert all(unquote(a["label"]) == "body" and a["style"] == "dashed" for *_, a in edges if "ltail" in a)
    labels = {k: unquote(a["label"]) for k, a in nodes.items()}
    assert labels[fixed[0]] == "%1 = fixed_point\nbody=graph('cell'), max_iter=100, tol=1e-10"
    assert labels["b2_v0"] == "%u\nf32[3,4] data" and labels["b1_v3"] == "%0 = matmul"  # names as in dump
    assert len(nodes) == sum(len(g) + len(g.outputs) for g in (graph, cell, graph.node(
        [n for n, node in graph.nodes() if node.op == "fixed_point"][1]).attrs["body"]))


def test_shared_and_nested_bodies_are_drawn_once():
    from compiler.ops.implicit import fixed_point

    def outer(z, x):
        return 0.5 * ops.tanh(fixed_point(lambda v, x: 0.5 * ops.sin(v) + x, z, x)) + x

    def f(x):
        return fixed_point(outer, x, x) + fixed_point(outer, x * 2.0, x)  # two traces of outer, equal text

    graph = compiler.trace(f, Spec((3,), "float64"))
    clusters = {}
    _, nodes, edges = check(to_dot(graph), clusters)
    assert sorted(unquote(a["label"]) for a, _ in clusters.values()) == ["body <lambda>", "body outer"]
    links = sorted((attrs["ltail"], dst) for _, dst, attrs in edges if "ltail" in attrs)
    assert [tail for tail, _ in links] == ["cluster_b1", "cluster_b1", "cluster_b2"]  # outer twice, lambda once
    assert links[2][1].startswith("b1_v")  # the inner body is used by an op inside outer's cluster
    assert to_dot(graph) == to_dot(compiler.parse(compiler.dump(graph)))


def test_a_body_containing_itself_still_draws():
    from compiler.ops.implicit import fixed_point

    graph = compiler.trace(lambda x: fixed_point(lambda z, x: 0.5 * z + x, x, x), Spec((2,)))
    (node_id,) = [n for n, node in graph.nodes() if node.op == "fixed_point"]
    body = graph.node(node_id).attrs["body"]
    k = body.add_node("fixed_point", (body.inputs[0], body.inputs[1]), graph.node(node_id).attrs)  # body in itself
    source = to_dot(graph)
    _, nodes, edges = check(source)
    assert ("b1_out0", f"b1_v{k}") in [(s, d) for s, d, a in edges if a.get("style") == "dashed"]
    if shutil.which("dot"):
        result = subprocess.run(["dot", "-Tsvg"], input=source, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and not result.stderr, result.stderr


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz is not installed")
def test_graphviz_accepts_bodies():
    source = to_dot(deq_grad())
    result = subprocess.run(["dot", "-Tsvg"], input=source, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert "body cell" in result.stdout and "body adjoint_cell" in result.stdout
