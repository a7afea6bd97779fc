"""Graph-level optimization passes (one per module) and the pass manager.

    from compiler.passes import PassManager, DeadCodeElimination, CommonSubexpressionElimination
    PassManager([DeadCodeElimination(), CommonSubexpressionElimination()], verify_each=True).run(graph)

The default pipeline, chosen by opt_level, is in compiler/pipeline.py.
"""
from compiler.passes.manager import DumpIR, Instrument, Pass, PassManager, PassRecord, VerifyEach  # noqa: F401
from compiler.passes.dce import DeadCodeElimination  # noqa: F401
from compiler.passes.cse import CommonSubexpressionElimination  # noqa: F401
from compiler.passes.fold import ConstantFolding  # noqa: F401
from compiler.passes.simplify import AlgebraicSimplification  # noqa: F401
from compiler.passes.accumulate import Accumulate  # noqa: F401
from compiler.passes.stack_products import StackProducts  # noqa: F401
from compiler.passes.pool_grad import PoolGrad  # noqa: F401
from compiler.passes.fuse import Fuse  # noqa: F401
from compiler.passes.epilogue import Epilogue  # noqa: F401
from compiler.passes.siblings import Siblings  # noqa: F401

ALL_PASSES = {p.name: p for p in (DeadCodeElimination, CommonSubexpressionElimination, ConstantFolding,
                                  AlgebraicSimplification, StackProducts, Accumulate, PoolGrad, Fuse, Epilogue,
                                  Siblings)}
