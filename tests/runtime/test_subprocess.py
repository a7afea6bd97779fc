"""A fresh interpreter loads and calls artifacts with the runtime alone: no compiler, no networkx."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.runtime.test_kernel import add_kernel, exp_kernel

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys, time
start = time.perf_counter()
import numpy as np
import runtime
add_path, add_sha, exp_path = sys.argv[1:4]
add = runtime.load(add_path, expected_sha256=add_sha)
loaded = time.perf_counter()
a = np.array([1, 2, 3, 4], dtype=np.float32)
assert np.array_equal(add(a, a * 10), a * 11)
(e,) = runtime.load(exp_path)(a)  # expf must resolve from libm in a fresh process
assert np.allclose(e, np.exp(a), rtol=1e-6)
try:
    add(a)
except runtime.CallError:
    pass
else:
    raise AssertionError("bad call was accepted")
assert "networkx" not in sys.modules, "networkx was imported"
leaked = sorted(m for m in sys.modules if m == "compiler" or m.startswith("compiler."))
assert not leaked, f"compiler modules were imported: {leaked}"
print(json.dumps({"ok": True, "import_and_load_s": loaded - start}))
"""


def test_fresh_process_loads_and_calls(tmp_path):
    add_path, exp_path = tmp_path / "add.pullback", tmp_path / "exp.pullback"
    add_kernel().save(add_path)
    exp_kernel().save(exp_path)
    add_sha = hashlib.sha256(add_path.read_bytes()).hexdigest()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(add_path), add_sha, str(exp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["ok"]
