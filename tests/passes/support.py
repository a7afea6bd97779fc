"""Helpers for the golden pass tests: IR text without the header and source locations."""
from __future__ import annotations

import re
import textwrap

import compiler
from compiler.ir.graph import Graph
from compiler.passes import Pass

_LOC = re.compile(r"  # .*$")


def body(graph: Graph) -> str:
    """compiler.dump(graph) minus its graph/in_tree/out_tree lines and `# loc` comments."""
    lines = compiler.dump(graph).splitlines()[3:]
    return "\n".join(_LOC.sub("", line).strip() for line in lines)


def expected(text: str) -> str:
    return "\n".join(line.strip() for line in textwrap.dedent(text).strip().splitlines())


def run(pass_: Pass, graph: Graph) -> bool:
    """Apply one pass, check the result is still a valid graph, return whether it changed."""
    changed = pass_.apply(graph)
    compiler.verify(graph)
    return changed


def ops_of(graph: Graph) -> list[str]:
    return [node.op for _, node in graph.nodes()]


def sections(graph: Graph) -> list[str]:
    """The dump without `# loc` comments, split into its graph sections (main first)."""
    text = "\n".join(line.split("  # ")[0].rstrip() for line in compiler.dump(graph).splitlines())
    return [expected(section) for section in text.strip().split("\n\n")]


def main_body(graph: Graph) -> str:
    """The main section without its header lines (like `body`, without the fusion bodies)."""
    return sections(graph)[0].split("\n", 3)[3]


def simplified(fn, *specs) -> Graph:
    """fn traced, then algebraic simplification and DCE (each must verify)."""
    from compiler.passes import AlgebraicSimplification, DeadCodeElimination

    graph = compiler.trace(fn, *specs)
    run(AlgebraicSimplification(), graph)
    run(DeadCodeElimination(), graph)
    return graph
