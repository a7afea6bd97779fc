"""Graph-valued attributes (fixed_point bodies) in the text form: print, parse back, evaluate, reject."""
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compiler
from compiler import ParseError, Spec, ops
from compiler.ir.graph import Graph
from compiler.ir.parser import MAX_BODY_DEPTH, parse
from compiler.ir.printer import dump, format_value, graph_sections, graphs_in
from compiler.ops.implicit import fixed_point, inline
from tests.ops.samples_implicit import SAMPLES, cell, contraction
from tests.ir.support import check_parses_or_raises_parse_error, edits, mutate

R = np.random.default_rng(0)
X = R.normal(size=(3, 4))
Y = R.normal(size=(3, 4))
W = contraction((4, 4), 0.5, 7)


def text(s: str) -> str:
    return textwrap.dedent(s).lstrip("\n")


def line(fn, offset: int) -> str:
    return f"test_bodies.py:{fn.__code__.co_firstlineno + offset}"


def headers(source: str) -> list[str]:
    return [row for row in source.splitlines() if row.startswith("graph ")]


def bodies(graph: Graph) -> list[Graph]:
    return [g for _, node in graph.nodes() for value in node.attrs.values() for g in graphs_in(value)]


def round_trip(graph: Graph, *args) -> Graph:
    """dump(parse(dump(g))) == dump(g); with args, the parsed graph evaluates bit-identically."""
    source = dump(graph)
    parsed = parse(source)
    assert dump(parsed) == source
    assert parsed.name == graph.name and parsed.input_names() == graph.input_names()
    if args:
        expected, got = _leaves(compiler.evaluate(graph, *args)), _leaves(compiler.evaluate(parsed, *args))
        assert len(expected) == len(got)
        for a, b in zip(expected, got):
            assert a.dtype == b.dtype and np.array_equal(a, b), "the parsed graph evaluates differently"
    return parsed


def _leaves(tree) -> list[np.ndarray]:
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in _leaves(item)]
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
    return [np.asarray(tree)]


# ------------------------------------------------------------------ the format
def step(z, c):
    return 0.5 * ops.cos(z) + c


def solve(x):
    return ops.sum(fixed_point(step, ops.zeros_like(x), x, tol=1e-10, max_iter=50))


def test_golden_text_and_its_backward_graph():
    graph = compiler.trace(solve, Spec((3,), "float64"))
    s, f = line(step, 1), line(solve, 1)
    body = text(f"""
        graph step
          in_tree (*, *)
          out_tree *
          %z = input : f64[3] data
          %c = input : f64[3] data
          %0 = cos(%z) : f64[3]  # {s}
          %1 = full() {{dtype='float64', shape=(), value=0.5}} : f64[]  # {s}
          %2 = mul(%1, %0) : f64[3]  # {s}
          %3 = add(%2, %c) : f64[3]  # {s}
          return %3
        """)
    assert dump(graph) == text(f"""
        graph solve
          in_tree (*,)
          out_tree *
          %x = input : f64[3] param
          %0 = full() {{dtype='float64', shape=(3,), value=0.0}} : f64[3]  # {f}
          %1 = fixed_point(%0, %x) {{body=graph('step'), max_iter=50, tol=1e-10}} : f64[3]  # {f}
          %2 = sum(%1) {{axes=(0,), keepdims=False}} : f64[]  # {f}
          return %2
        """) + "\n" + body
    assert str(graph) == dump(graph)
    # the backward graph: the forward body again, then the adjoint body holding the body's vjp
    assert dump(compiler.grad(graph)) == text(f"""
        graph grad_solve
          in_tree (*,)
          out_tree *
          %x = input : f64[3] param
          %0 = full() {{dtype='float64', shape=(3,), value=0.0}} : f64[3]  # {f}
          %1 = fixed_point(%0, %x) {{body=graph('step'), max_iter=50, tol=1e-10}} : f64[3]  # {f}
          %2 = full() {{dtype='float64', shape=(), value=1.0}} : f64[]  # seed: d(output)/d(output) = 1
          %3 = broadcast_to(%2) {{shape=(3,)}} : f64[3]  # grad sum @ {f}
          %4 = fixed_point(%3, %3, %1, %x) {{body=graph('adjoint_step'), max_iter=50, tol=1e-10}} : f64[3]  # grad fixed_point @ {f}
          return %4
        """) + "\n" + body + "\n" + text(f"""
        graph adjoint_step
          in_tree (*, *, *, *)
          out_tree *
          %u = input : f64[3] data
          %g = input : f64[3] data
          %primal.z = input : f64[3] data
          %primal.c = input : f64[3] data
          %0 = full() {{dtype='float64', shape=(), value=0.5}} : f64[]  # {s}
          %1 = mul(%u, %0) : f64[3]  # grad mul @ {s}
          %2 = sin(%primal.z) : f64[3]  # grad cos @ {s}
          %3 = mul(%1, %2) : f64[3]  # grad cos @ {s}
          %4 = neg(%3) : f64[3]  # grad cos @ {s}
          %5 = add(%g, %4) : f64[3]  # adjoint of step: g + (df/dz)^T u
          return %5
        """)


def test_format_value_of_graphs():
    body = compiler.trace(step, Spec((3,)), Spec((3,)), param_argnums=())
    other = Graph("my body")
    assert format_value(body) == "graph('step')"
    assert format_value((body, other)) == "(graph('step'), graph('my body'))"
    assert format_value([body], {id(body): (body, "step_2")}) == "[graph('step_2')]"
    assert graphs_in((1, [body, (other,)], "x")) == [body, other] and graphs_in(3) == []


# ------------------------------------------------------------ round trips
def deq_loss(tol=1e-13, max_iter=200):
    def loss(params, y):
        w, x = params
        z = fixed_point(cell, ops.zeros(x.shape, x.dtype), x, w, tol=tol, max_iter=max_iter)
        return ops.sum((z - y) ** 2)
    return loss


def outer(z, x):
    inner = fixed_point(lambda v, z, x: 0.5 * ops.sin(v + z) + x, ops.zeros_like(z), z, x, tol=1e-13)
    return 0.5 * ops.tanh(inner) + x


def nested_loss(x):
    return ops.sum(fixed_point(outer, ops.zeros_like(x), x, tol=1e-13) ** 2)


def test_deq_forward_grad_and_vjp_round_trip():
    graph = compiler.trace(deq_loss(), (W, X), Y)
    round_trip(graph, (W, X), Y)
    backward = compiler.value_and_grad(graph)
    parsed = round_trip(backward, (W, X), Y)
    assert headers(dump(backward)) == ["graph value_and_grad_loss", "graph cell", "graph adjoint_cell"]
    assert [b.name for b in bodies(parsed)] == ["cell", "adjoint_cell"]
    round_trip(compiler.grad(graph), (W, X), Y)
    forward = compiler.trace(lambda x, w: fixed_point(cell, ops.zeros_like(x), x, w, tol=1e-13, max_iter=200), X, W)
    round_trip(compiler.vjp(forward, argnums=(0, 1)), X, W, R.normal(size=X.shape))


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_implicit_samples_round_trip(sample):
    graph = compiler.trace(sample.fn, *sample.args)
    round_trip(graph, *sample.args)
    ct = np.ones_like(compiler.evaluate(graph, *sample.args))
    round_trip(compiler.vjp(graph, argnums=0), *sample.args, ct)


def test_nested_fixed_point_and_its_grad():
    x = R.normal(size=4)
    graph = compiler.trace(nested_loss, x)
    parsed = round_trip(graph, x)
    assert headers(dump(graph)) == ["graph nested_loss", "graph outer", "graph <lambda>"]
    (outer_body,) = bodies(parsed)
    assert [b.name for b in bodies(outer_body)] == ["<lambda>"]
    backward = compiler.grad(graph)
    source = dump(backward)
    round_trip(backward, x)
    assert headers(source) == ["graph grad_nested_loss", "graph outer", "graph adjoint_outer", "graph <lambda>",
                               "graph adjoint_<lambda>"]
    # the adjoint of outer holds the vjp of outer, which solves the inner adjoint system
    adjoint_outer = source[source.index("graph adjoint_outer"):source.index("graph <lambda>")]
    assert "body=graph('<lambda>')" in adjoint_outer and "body=graph('adjoint_<lambda>')" in adjoint_outer


def test_second_order_graph_round_trips():
    v = R.normal(size=X.shape)
    first = compiler.grad(compiler.trace(lambda x, w, y: deq_loss()((w, x), y), X, W, Y), argnums=0)

    def directional(x, w, y):
        (g_x,) = inline(first, x, w, y)
        return ops.sum(g_x * ops.constant(v))

    second = compiler.grad(compiler.trace(directional, X, W, Y), argnums=0)
    round_trip(second, X, W, Y)
    assert headers(dump(second)) == ["graph grad_directional", "graph cell", "graph adjoint_cell",
                                     "graph adjoint_adjoint_cell"]


def test_sections_follow_their_first_reference():
    x = R.normal(size=4)
    graphs = compiler.grad(compiler.trace(nested_loss, x)), compiler.value_and_grad(compiler.trace(deq_loss(), (W, X), Y))
    for graph in graphs:
        source = dump(graph)
        names = [h[len("graph "):] for h in headers(source)]
        assert len(set(names)) == len(names)
        for name in names[1:]:
            assert source.index(f"graph({name!r})") < source.index(f"\ngraph {name}\n")


# ------------------------------------------------------- sharing and names
def two_solves(f, g):
    def fn(x):
        return fixed_point(f, ops.zeros_like(x), x, tol=1e-12) - fixed_point(g, ops.zeros_like(x), x, tol=1e-12)
    return fn


def test_one_body_object_is_printed_once_and_parses_back_shared():
    graph = compiler.trace(lambda x: fixed_point(step, x, x, tol=1e-12), Spec((3,), "float64"))
    (node_id,) = [n for n, node in graph.nodes() if node.op == "fixed_point"]
    node = graph.node(node_id)
    again = graph.add_node("fixed_point", (node_id, graph.inputs[0]), node.attrs, loc="again")
    graph.set_outputs([graph.add_node("add", (node_id, again), loc="sum")])
    source = dump(graph)
    assert headers(source) == ["graph <lambda>", "graph step"] and source.count("body=graph('step')") == 2
    x = np.array([0.1, -2.0, 3.0])
    parsed = round_trip(graph, x)
    first, second = bodies(parsed)
    assert first is second


def test_bodies_that_print_alike_share_a_section():
    """Two traces of one function are distinct objects with equal text: printed once, parsed as one."""
    def f(z, x):
        return 0.5 * ops.sin(z) + x
    graph = compiler.trace(two_solves(f, f), Spec((3,), "float64"))
    a, b = bodies(graph)
    assert a is not b and dump(a) == dump(b)
    source = dump(graph)
    assert headers(source) == ["graph fn", "graph f"]
    parsed = round_trip(graph, np.array([0.3, 0.2, 0.1]))
    first, second = bodies(parsed)
    assert first is second


def test_different_bodies_with_one_name_get_suffixes():
    graph = compiler.trace(two_solves(lambda z, x: 0.5 * ops.sin(z) + x, lambda z, x: 0.5 * ops.cos(z) + x),
                           Spec((3,), "float64"))
    source = dump(graph)
    assert headers(source) == ["graph fn", "graph <lambda>", "graph <lambda>_1"]
    assert "body=graph('<lambda>')" in source and "body=graph('<lambda>_1')" in source
    parsed = round_trip(graph, np.array([0.3, 0.2, 0.1]))
    assert [b.name for b in bodies(parsed)] == ["<lambda>", "<lambda>_1"]  # parsed under the section names
    assert [b.name for b in bodies(graph)] == ["<lambda>", "<lambda>"]  # printing never renames the graphs


def test_suffixes_skip_names_already_taken():
    def make(name, k):
        def f(z, x):
            return k * ops.sin(z) + x
        f.__name__ = name
        return f
    fns = [make("cell", 0.1), make("cell", 0.2), make("cell_1", 0.3), make("main", 0.4), make("my body", 0.5),
           make("", 0.6), make("it's", 0.7)]

    def main(x):
        total = x
        for f in fns:
            total = total + fixed_point(f, ops.zeros_like(x), x, tol=1e-12)
        return total

    graph = compiler.trace(main, Spec((2,), "float64"))
    source = dump(graph)
    assert headers(source) == ["graph main", "graph cell", "graph cell_1", "graph cell_1_1", "graph main_1",
                               "graph 'my body'", "graph ''", "graph it's"]
    for ref in ("graph('cell_1_1')", "graph('main_1')", "graph('my body')", "graph('')", 'graph("it\'s")'):
        assert ref in source
    round_trip(graph, np.array([0.5, -0.5]))


def test_graph_sections_maps_every_body_to_its_section():
    def f(z, x):
        return 0.5 * ops.sin(z) + x
    graph = compiler.trace(two_solves(f, f), Spec((3,), "float64"))
    a, b = bodies(graph)
    sections = graph_sections(graph)
    assert list(sections) == [id(graph), id(a), id(b)]
    assert sections[id(graph)] == (graph, "fn") and sections[id(a)] == sections[id(b)] == (a, "f")


# ------------------------------------------------------------ parse errors
BASE = text("""
    graph g
      in_tree (*,)
      out_tree *
      %x = input : f64[3] data
      %0 = fixed_point(%x, %x) {body=graph('step'), max_iter=50, tol=1e-10} : f64[3]
      return %0

    graph step
      in_tree (*, *)
      out_tree *
      %z = input : f64[3] data
      %c = input : f64[3] data
      %0 = cos(%z) : f64[3]
      %1 = full() {dtype='float64', shape=(), value=0.5} : f64[]
      %2 = mul(%1, %0) : f64[3]
      %3 = add(%2, %c) : f64[3]
      return %3
    """)


def edit(number: int, new: str, source: str = BASE) -> str:
    lines = source.splitlines()
    lines[number - 1] = new
    return "\n".join(lines) + "\n"


def fails(source: str, line_number: int, *fragments: str) -> str:
    with pytest.raises(ParseError) as info:
        parse(source)
    message = str(info.value)
    assert message.startswith(f"line {line_number}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_base_parses_and_evaluates():
    graph = parse(BASE)
    assert dump(graph) == BASE
    x = np.array([0.1, 0.5, -1.0])
    z = compiler.evaluate(graph, x)
    np.testing.assert_allclose(z, 0.5 * np.cos(z) + x, atol=1e-9)
    (body,) = bodies(graph)
    assert body.name == "step" and body.input_names() == ["z", "c"] and len(body.outputs) == 1


def test_sections_may_come_in_any_order_and_be_annotated():
    inner = text("""
        graph g
          in_tree (*,)
          out_tree *
          %x = input : f64[3] data
          %0 = fixed_point(%x, %x) {body=graph('outer'), max_iter=50, tol=1e-10} : f64[3]
          return %0
        # the inner body first, though the outer one refers to it
        graph 'inner'
          in_tree (*, *)
          out_tree *
          %v = input : f64[3] data
          %z = input : f64[3] data
          %0 = full() {dtype='float64', shape=(), value=0.25} : f64[]
          %1 = mul(%0, %z) : f64[3]
          return %1
        graph outer
          in_tree (*, *)
          out_tree *
          %z = input : f64[3] data
          %x = input : f64[3] data
          %0 = fixed_point(%z, %z) {body=graph("inner"), max_iter=50, tol=1e-10} : f64[3]
          %1 = add(%0, %x) : f64[3]
          return %1
        """)
    graph = parse(inner)
    assert headers(dump(graph)) == ["graph g", "graph outer", "graph inner"]  # printed in reference order
    x = np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(compiler.evaluate(graph, x), x / 0.75, rtol=1e-9)


def test_undefined_body():
    fails(BASE.replace("graph('step')", "graph('nope')"), 5, "graph('nope') refers to no section",
          "the text has no `graph nope`")
    fails(BASE.split("\ngraph step")[0], 5, "graph('step') refers to no section")  # the body section is missing


def test_duplicate_section_names():
    fails(BASE + "\n" + BASE.split("\n\n")[1], 19, "graph 'step' is already defined on line 8")
    fails(edit(8, "graph g"), 8, "graph 'g' is already defined on line 1")  # bodies and the graph share names
    fails(edit(8, "graph 'step'", BASE + "\n" + BASE.split("\n\n")[1].replace("graph step", "graph \"step\"")),
          19, "already defined on line 8")


def test_bodies_may_not_contain_themselves():
    selfish = edit(15, "  %2 = fixed_point(%0, %c) {body=graph('step'), max_iter=5, tol=0.1} : f64[3]")
    fails(selfish, 15, "graph('step') makes graph 'step' contain itself: 'step' -> 'step'")
    fails(BASE.replace("graph('step')", "graph('g')"), 5, "contain itself: 'g' -> 'g'")
    two = edit(15, "  %2 = fixed_point(%0, %c) {body=graph('other'), max_iter=5, tol=0.1} : f64[3]") + "\n" + text("""

        graph other
          in_tree (*, *)
          out_tree *
          %z = input : f64[3] data
          %c = input : f64[3] data
          %0 = fixed_point(%z, %c) {body=graph('step'), max_iter=5, tol=0.1} : f64[3]
          return %0
        """)
    fails(two, 24, "graph('step') makes graph 'step' contain itself: 'step' -> 'other' -> 'step'")


def test_body_must_match_the_op():
    fails(edit(12, "  %c = input : f64[] data"), 5, "fixed_point: operand 1 is f64[3] but body input 'c' is f64[]")
    fails(edit(5, "  %0 = fixed_point(%x) {body=graph('step'), max_iter=50, tol=1e-10} : f64[3]"), 5,
          "body 'step' takes 2 inputs (z, *args) but the op has 1 operands")
    wrong_result = edit(16, "  %3 = sum(%2) {axes=(0,), keepdims=False} : f64[]")
    fails(wrong_result, 5, "body 'step' returns f64[] but the iterate z is f64[3]")
    fails(edit(5, "  %0 = fixed_point(%x, %x) {body=graph('step'), max_iter=50, tol=1e-10} : f32[3]"), 5,
          "declared type f32[3] but its operands give f64[3]")
    fails(BASE.replace("graph('step')", "'step'"), 5, "body must be a Graph, got str")


def test_errors_inside_a_body_name_their_line():
    fails(edit(13, "  %0 = frobnicate(%z) : f64[3]"), 13, "unknown op 'frobnicate'")
    fails(edit(16, "  %3 = add(%2, %q) : f64[3]"), 16, "%q is not defined")
    fails(edit(16, "  %3 = add(%2, %x) : f64[3]"), 16, "%x is not defined")  # values are local to a section
    fails(edit(9, "  in_tree (*, *, *)"), 9, "in_tree has 3 leaves but the text defines 2 inputs")


def test_truncated_and_unused_sections():
    fails(BASE.replace("  return %0\n", ""), 7, "graph 'g' ends without a `return` line",
          "this `graph` line starts the next section")
    fails(BASE.rsplit("  return %3\n", 1)[0], 16, "the text ends without a `return` line (truncated?)")
    fails(BASE.split("  in_tree (*, *)")[0], 8, "the text ends before the `in_tree` line (truncated?)")
    fails(BASE.replace("graph step\n  in_tree (*, *)\n", "graph step\n"), 9, "expected `in_tree ...`, got 'out_tree *'")
    early = BASE.replace("graph step\n", "graph step\n\ngraph other\n")
    fails(early, 10, "graph 'step' ends before the `in_tree` line: this `graph` line starts the next section")
    unused = BASE + "\n" + BASE.split("\n\n")[1].replace("graph step", "graph spare")
    fails(unused, 19, "graph 'spare' is not used: no attribute refers to graph('spare')")


@pytest.mark.parametrize("ref, problem", [
    ("graph(3)", "write a body as graph('name'), got 'graph(3)'"),
    ("graph('a', 'b')", "write a body as graph('name')"),
    ("graph(name='step')", "write a body as graph('name')"),
    ("graph()", "write a body as graph('name')"),
    ("graph", "'graph' is not a literal"),
    ("graph.step", "'graph.step' is not a literal"),
    ("array([graph('step')], dtype='float64')", "a float64 array cannot hold graph('step')"),
])
def test_malformed_body_references(ref, problem):
    fails(BASE.replace("graph('step')", ref), 5, f"attribute body: {problem}")


def test_bodies_in_containers_are_resolved():
    source = BASE.replace("body=graph('step')", "body=(graph('step'),)")
    fails(source, 5, "body must be a Graph, got tuple")  # resolved to the Graph, then rejected by the op's rule


def test_nesting_depth_is_limited():
    def chain(depth):
        sections = [text("""
            graph g
              in_tree (*,)
              out_tree *
              %x = input : f64[1] data
              %0 = fixed_point(%x, %x) {body=graph('b0'), max_iter=5, tol=0.1} : f64[1]
              return %0
            """)]
        for k in range(depth):
            ref = f"fixed_point(%z, %c) {{body=graph('b{k + 1}'), max_iter=5, tol=0.1}}" if k + 1 < depth else "neg(%z)"
            sections.append(f"graph b{k}\n  in_tree (*, *)\n  out_tree *\n  %z = input : f64[1] data\n"
                            f"  %c = input : f64[1] data\n  %0 = {ref} : f64[1]\n  return %0\n")
        return "\n".join(sections)
    assert dump(parse(chain(20))) == chain(20)
    assert dump(parse(chain(MAX_BODY_DEPTH))) == chain(MAX_BODY_DEPTH)
    deep = chain(MAX_BODY_DEPTH + 5)
    where = next(n for n, row in enumerate(deep.splitlines(), 1) if f"graph('b{MAX_BODY_DEPTH}')" in row)
    fails(deep, where, f"bodies are nested more than {MAX_BODY_DEPTH} deep")


def test_a_body_containing_itself_prints_but_does_not_parse():
    graph = compiler.trace(lambda x: fixed_point(lambda z, x: 0.5 * z + x, x, x), Spec((2,)))
    (body,) = bodies(graph)
    body.add_node("fixed_point", body.inputs, {"body": body, "tol": 0.1, "max_iter": 3}, loc="me")
    source = dump(graph)
    assert headers(source) == ["graph <lambda>", "graph <lambda>_1"]
    assert "body=graph('<lambda>_1')" in source.split("graph <lambda>_1")[1]
    with pytest.raises(ParseError, match=r"contain itself: '<lambda>_1' -> '<lambda>_1'"):
        parse(source)


# ------------------------------------------------------------------ fuzzing
_FUZZ_BASE = dump(compiler.grad(compiler.trace(solve, Spec((3,), "float64"))))


@settings(max_examples=200, deadline=None)
@given(edits("%=(){}[]:,#'\"\\ \nab01.-_*xf64graph", 4))
def test_mutated_text_parses_or_raises_parse_error(changes):
    check_parses_or_raises_parse_error(mutate(_FUZZ_BASE, changes))

