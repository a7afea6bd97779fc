"""grad, value_and_grad and vjp: graph transformations, as in JAX but ahead of time.

Each returns a new Graph (plain IR) that can be printed, optimized, compiled — or
differentiated again.
"""
from __future__ import annotations

from typing import Any, Sequence

from compiler.autodiff.adjoint import backward, eliminate_dead_code
from compiler.errors import PullbackError
from compiler.ir.graph import Graph, building
from compiler.ir.types import FLOAT_DTYPES
from compiler.ir.verify import verify
from compiler.ops.constants import full
from compiler.passes.manager import gc_paused
from runtime.pytree import LEAF, leaf_paths, num_leaves


def _normalize_argnums(graph: Graph, argnums: int | Sequence[int]) -> tuple[tuple[int, ...], bool]:
    if not isinstance(graph.in_tree, tuple):
        raise PullbackError(f"{graph.name}: in_tree must be a tuple of arguments to pick argnums from")
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)
    count = len(graph.in_tree)
    for n in nums:
        if not isinstance(n, int) or not -count <= n < count:
            raise PullbackError(f"{graph.name}: argnums {argnums!r} out of range for {count} argument(s)")
    return tuple(n % count for n in nums), single


def _inputs_of(graph: Graph, argnum: int) -> list[int]:
    paths = leaf_paths(graph.in_tree)
    chosen = [i for i, path in zip(graph.inputs, paths) if path[0] == argnum]
    for input_id in chosen:
        node = graph.node(input_id)
        if node.type.dtype not in FLOAT_DTYPES:
            raise PullbackError(
                f"{graph.name}: cannot differentiate with respect to input {node.attrs['name']!r} of dtype "
                f"{node.type.dtype}; gradients need float inputs (pass it in another argument, or cast)"
            )
    return chosen


def _gradient_outputs(graph: Graph, cotangents: dict[int, int | None], wrt: list[int]) -> list[int]:
    outputs = []
    with building(graph):
        for input_id in wrt:
            ct = cotangents.get(input_id)
            if ct is None:  # the output does not depend on this input: its gradient is zero
                node = graph.node(input_id)
                graph.default_loc = f"zero gradient of {node.attrs['name']}"
                ct = full(node.type.shape, 0.0, node.type.dtype, graph=graph).id
                graph.default_loc = None
            outputs.append(ct)
    return outputs


def _differentiate(graph: Graph, argnums: int | Sequence[int], seeds_from: str) -> tuple[Graph, list[int], Any, list[int]]:
    verify(graph)
    nums, single = _normalize_argnums(graph, argnums)
    wrt_groups = [_inputs_of(graph, n) for n in nums]
    wrt = [i for group in wrt_groups for i in group]
    new = graph.copy()
    new.name = f"{seeds_from}_{graph.name}"
    if seeds_from == "vjp":
        seeds = _cotangent_inputs(new)
    else:
        if len(graph.outputs) != 1:
            raise PullbackError(f"{graph.name}: grad needs a single scalar output, the graph has {len(graph.outputs)} outputs; use vjp")
        out_type = graph.type(graph.outputs[0])
        if out_type.shape != () or out_type.dtype not in FLOAT_DTYPES:
            raise PullbackError(f"{graph.name}: grad needs a scalar float output, got {out_type}; use vjp for other outputs")
        new.default_loc = "seed: d(output)/d(output) = 1"
        seeds = {graph.outputs[0]: full((), 1.0, out_type.dtype, graph=new).id}
        new.default_loc = None
    result = backward(graph, wrt, seeds, graph=new)
    grads = _gradient_outputs(new, result.cotangents, wrt)
    trees = [graph.in_tree[n] for n in nums]
    grad_tree = trees[0] if single else tuple(trees)
    return new, grads, grad_tree, list(seeds)


def _cotangent_inputs(graph: Graph) -> dict[int, int]:
    """Add one cotangent input per output (named ct.<i>); extends in_tree with their tree."""
    seeds: dict[int, int] = {}
    taken = set(graph.input_names())
    prefix = "ct"
    while any(name == prefix or name.startswith(prefix + ".") for name in taken):
        prefix = "d" + prefix  # vjp of a vjp graph: ct, dct, ddct...
    for index, output in enumerate(graph.outputs):
        if output in seeds:
            raise PullbackError(f"{graph.name}: vjp of a graph that returns the same value twice is not supported")
        seeds[output] = graph.add_input(f"{prefix}.{index}", graph.type(output), "data", loc="output cotangent")
    graph.in_tree = tuple(graph.in_tree) + (graph.out_tree,)
    return seeds


def grad(graph: Graph, argnums: int | Sequence[int] = 0) -> Graph:
    """Graph computing the gradient of the scalar output w.r.t. the chosen arguments."""
    with gc_paused():
        new, grads, tree, _ = _differentiate(graph, argnums, "grad")
    new.set_outputs(grads, tree if num_leaves(tree) == len(grads) else None)
    return _finish(new)


def value_and_grad(graph: Graph, argnums: int | Sequence[int] = 0, *, remat: bool = False,
                   memory_budget_bytes: int | None = None) -> Graph:
    """Graph computing (value, gradients): the training step.

    remat=True rematerializes cheap forward values in the backward pass instead of keeping
    them alive, chosen by the min-cut of compiler.autodiff.saved (matmuls are never
    recomputed); memory_budget_bytes bounds the saved bytes where that is possible
    (see `pullback dump MODEL --stage saved`).
    """
    with gc_paused():
        new, grads, tree, _ = _differentiate(graph, argnums, "value_and_grad")
    new.set_outputs([graph.outputs[0]] + grads, (LEAF, tree))
    new = _finish(new)
    if remat or memory_budget_bytes is not None:
        from compiler.autodiff.saved import apply_rematerialization, plan_rematerialization

        plan = plan_rematerialization(new, graph, memory_budget_bytes)
        new = apply_rematerialization(new, graph, plan)
        verify(new)
    return new


def vjp(graph: Graph, argnums: int | Sequence[int] = 0) -> Graph:
    """Graph taking (*args, cotangents) and returning the vector-Jacobian product.

    The cotangents argument has the structure of the graph's outputs.
    """
    with gc_paused():
        new, grads, tree, _ = _differentiate(graph, argnums, "vjp")
    new.set_outputs(grads, tree)
    return _finish(new)


def _finish(graph: Graph) -> Graph:
    eliminate_dead_code(graph)
    verify(graph)
    return graph
