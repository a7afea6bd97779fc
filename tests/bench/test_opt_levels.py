"""bench/opt_levels.py: the opt-level report measures real kernels and checks them."""
from __future__ import annotations

import os
import sys

from bench import opt_levels


def test_mlp_report_rows_and_table() -> None:
    sys.path.insert(0, os.path.join(opt_levels.ROOT, "examples"))
    rows = opt_levels.measure("mlp", (0, 2), calls=3)
    by_level = {row["opt_level"]: row for row in rows}
    assert set(by_level) == {0, 2}
    # the passes fuse: fewer graph ops and kernel calls at -O2
    assert by_level[2]["graph_ops"] < by_level[0]["graph_ops"]
    assert by_level[2]["kernel_calls"] < by_level[0]["kernel_calls"]
    assert all(row["workspace_bytes"] > 0 and row["median_ms"] > 0 for row in rows)
    text = opt_levels.table(rows)
    assert text.splitlines()[0].split()[:2] == ["model", "opt"]
    assert len(text.splitlines()) == 2 + len(rows)
