"""The ops: numpy-named functions for traced code, and the registry of op definitions.

Each op family lives in its own module with its shape rule, numpy reference and VJP
rule; this package re-exports their public functions.
"""
from compiler.ops.tensor import Tensor  # noqa: F401
from compiler.ops.constants import constant, full, full_like, ones, ones_like, zeros, zeros_like  # noqa: F401
from compiler.ops.elementwise import *  # noqa: F401,F403

from compiler.ops.shape import *  # noqa: F401,F403
from compiler.ops.linalg import *  # noqa: F401,F403
from compiler.ops.reductions import *  # noqa: F401,F403
from compiler.ops.accumulate import *  # noqa: F401,F403
from compiler.ops.implicit import *  # noqa: F401,F403
from compiler.ops.conv import *  # noqa: F401,F403
from compiler.ops.gather import *  # noqa: F401,F403
from compiler.ops import fusion as _fusion  # noqa: F401 - registers `fusion` (made by the fuse pass, not user code)
