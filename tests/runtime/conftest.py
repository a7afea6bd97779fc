"""Fixtures shared by the Kernel tests: the hand-written IR kernels of test_kernel.py."""
import pytest

import runtime
from tests.runtime.test_kernel import add_kernel, tree_kernel


@pytest.fixture(scope="module")
def add() -> runtime.Kernel:
    return add_kernel()


@pytest.fixture(scope="module")
def tree() -> runtime.Kernel:
    return tree_kernel()
