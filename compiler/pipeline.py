"""The default optimization pipeline: which graph passes run at each opt_level.

    0: nothing
    1: dce, fold, simplify, cse, dce
    2: level 1, then stack-products (thin products a sum adds up -> one deeper product per
       block of them), accumulate (add trees -> additions as the pieces arrive), then fold,
       simplify, cse, dce again, then pool-grad (a ReLU mask and bias sums move from a
       pool's scattered gradient onto the pooled one), then fuse (elementwise chains and the reductions they feed
       -> `fusion` ops), epilogue (a matmul joins the fusion or op that alone reads it; sums
       of products become accumulate chains) and siblings (reductions over a common input
       share one loop): these three come last, they hide their members from every other pass

`optimize` works on a copy: the caller's graph is never changed.
"""
from __future__ import annotations

import os

from compiler.ir.graph import Graph
from compiler.passes import (
    Accumulate,
    AlgebraicSimplification,
    CommonSubexpressionElimination,
    ConstantFolding,
    DeadCodeElimination,
    Pass,
    PassManager,
    PoolGrad,
    StackProducts,
)
from compiler.passes.epilogue import Epilogue
from compiler.passes.fuse import Fuse
from compiler.passes.siblings import Siblings
from compiler.passes.manager import gc_paused

dce = DeadCodeElimination()
fold = ConstantFolding()
simplify = AlgebraicSimplification()
cse = CommonSubexpressionElimination()
stack_products = StackProducts()
accumulate = Accumulate()
pool_grad = PoolGrad()  # before fuse: it matches plain where/sum ops
fuse = Fuse()
epilogue = Epilogue()
siblings = Siblings()

PIPELINES: dict[int, list[Pass]] = {
    0: [],
    1: [dce, fold, simplify, cse, dce],
    2: [dce, fold, simplify, cse, dce,
        stack_products, accumulate,
        fold, simplify, cse, dce,
        pool_grad,
        fuse, epilogue, siblings],
}


def passes_for(opt_level: int) -> list[Pass]:
    if opt_level not in PIPELINES:
        raise ValueError(f"opt_level must be one of {sorted(PIPELINES)}, got {opt_level!r}")
    return list(PIPELINES[opt_level])


def pass_manager(opt_level: int = 2, dump_dir: str | os.PathLike | None = None,
                 verify_each: bool | None = None) -> PassManager:
    """The PassManager `optimize` uses; keep it to read its timing `records` afterwards."""
    return PassManager(passes_for(opt_level), verify_each=verify_each, dump_dir=dump_dir)


def optimize(graph: Graph, opt_level: int = 2, dump_dir: str | os.PathLike | None = None,
             verify_each: bool | None = None) -> Graph:
    """An optimized copy of `graph`. verify_each=None follows PULLBACK_DEBUG."""
    with gc_paused():
        return pass_manager(opt_level, dump_dir, verify_each).run(graph.copy())

