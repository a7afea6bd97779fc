"""What the graph passes buy: one training step compiled at opt_level 0 and at 2, side by side.

    python -m bench.opt_levels [--calls 60] [--models mlp,rnn,lstm] [--json out.json]

For each example model (examples/<name>.py: its loss, specs and example batch), the
value-and-gradient graph is compiled at every level asked for, and the table gives, per
level: graph ops after the passes (fusion bodies not counted), kernel calls per step
(each call is one loop nest, or one matmul/conv), distinct kernel functions, peak
workspace bytes, and the median step time. The kernels of one model are timed
round-robin in one process (bench/harness.py), so drift hits every level alike; the
speedup column is median(level 0) / median(level).
The compiled results are checked against each other before timing (loss and every
gradient within float32 tolerance of level 0), so a faster wrong kernel cannot win.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

from bench import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("mlp", "rnn", "lstm")
LEVELS = (0, 1, 2)
RTOL = 2e-3


def _graph_ops(graph: Any) -> int:
    return sum(1 for n in graph.topo_order() if graph.node(n).op not in ("input", "full", "constant"))


def measure(name: str, levels: tuple[int, ...], calls: int) -> list[dict[str, Any]]:
    import compiler
    from compiler.models import load_model
    from runtime.pytree import flatten

    model = load_model(os.path.join(ROOT, "examples", f"{name}.py"))
    step_graph = compiler.value_and_grad(model.trace())
    args = model.example_args(0)
    rows, kernels, results = [], {}, {}
    for level in levels:
        kernel = compiler.compile(step_graph, opt_level=level, cache=False)
        optimized = compiler.optimize(step_graph, min(level, 2)) if level else step_graph
        kernels[level] = kernel
        results[level] = flatten(kernel(*args))[0]
        rows.append({"model": name, "opt_level": level, "graph_ops": _graph_ops(optimized),
                     "kernel_calls": kernel.manifest["extra"]["kernel_calls"], "kernels": kernel.manifest["extra"]["kernels"],
                     "workspace_bytes": kernel.workspace_bytes})
    base = results[levels[0]]
    for level in levels[1:]:
        for a, b in zip(results[level], base):
            err = float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0))
            scale = float(np.max(np.abs(np.asarray(b)), initial=0.0)) or 1.0
            if err > RTOL * scale:
                raise SystemExit(f"{name}: opt_level {level} disagrees with level {levels[0]} ({err:.3g})")
    stats = harness.round_robin({str(level): (lambda k=kernels[level]: k(*args)) for level in levels},
                                calls=calls, warmup=5)
    for row in rows:
        s = stats[str(row["opt_level"])]
        row["median_ms"] = s.median * 1e3
        row["p10_ms"], row["p90_ms"] = s.p10 * 1e3, s.p90 * 1e3
        row["speedup"] = stats[str(levels[0])].median / s.median
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ("model", "opt", "graph ops", "kernel calls", "kernels", "workspace B", "median ms", "p10-p90 ms",
            "speedup")
    lines = [head]
    for r in rows:
        lines.append((r["model"], str(r["opt_level"]), str(r["graph_ops"]), str(r["kernel_calls"]),
                      str(r["kernels"]), f"{r['workspace_bytes']:,}", f"{r['median_ms']:.3f}",
                      f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f}", f"{r['speedup']:.2f}x"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=60, help="timed calls per level (default 60)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated example names")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="opt levels (default 0,1,2)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    levels = tuple(int(x) for x in args.levels.split(","))
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        rows += measure(name.strip(), levels, args.calls)
    machine = harness.machine_info()
    print(f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, load {machine.get('load_average_1min')}")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
