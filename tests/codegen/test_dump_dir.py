"""compiler.compile(graph, dump_dir=...) writes the IR after every pass and the LLVM IR."""
import numpy as np

import compiler
from compiler import Spec, ops


def test_compile_writes_numbered_pass_dumps(tmp_path):
    graph = compiler.value_and_grad(compiler.trace(lambda w, x: ops.sum(ops.tanh(x @ w) ** 2), Spec((3, 2)), Spec((4, 3))))
    kernel = compiler.compile(graph, dump_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0].startswith("000_") and "llvm.ll" in names
    assert any(n.endswith("_fuse.txt") for n in names) and any(n.endswith(".dot") for n in names)
    assert (tmp_path / "llvm.ll").read_text().count("define") >= 1
    w, x = np.ones((3, 2), np.float32), np.ones((4, 3), np.float32)
    np.testing.assert_allclose(kernel(w, x)[0], compiler.evaluate(graph, w, x)[0], rtol=1e-5)
