"""The printed tables and the JSON form of the results."""
from __future__ import annotations

from typing import Any

import numpy as np


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def timing_rows(records: list[dict]) -> list[list[str]]:
    rows = []
    for rec in records:
        if rec["status"] != "ok":
            rows.append([rec["name"], f"({rec['status']})"] + ["-"] * 8)
            continue
        for name, c in rec["contenders"].items():
            if not c.get("available"):
                continue
            frac, frac1 = c.get("peak_fraction"), c.get("single_thread_peak_fraction")
            rows.append([rec["name"], name, _fmt(c["median_ms"], ".3f"), _fmt(c["p10_ms"], ".3f"),
                         _fmt(c["p90_ms"], ".3f"), _fmt(c.get("pullback_ratio"), ".2f"),
                         _fmt(c.get("gflops"), ".2f"), "-" if frac is None else f"{100 * frac:.1f}%",
                         "-" if frac1 is None else f"{100 * frac1:.1f}%",
                         _fmt(c.get("setup_s"), ".2f")])
    return rows


def pullback_rows(records: list[dict]) -> list[list[str]]:
    rows = []
    for rec in records:
        pb = rec.get("pullback")
        if pb is None:
            continue
        if not pb.get("available"):
            rows.append([rec["name"], "not available: " + pb["reason"]] + [""] * 7)
            continue
        speedup = pb.get("parallel_speedup")
        rows.append([rec["name"], rec["status"], _fmt(pb["trace_s"] + pb["autodiff_s"], ".2f"),
                     _fmt(pb["compile_cold_s"], ".2f"), _fmt(pb["compile_cached_s"], ".3f"),
                     _fmt(pb.get("backward_forward_ratio"), ".2f"), f"{speedup:.2f}x" if speedup else "-",
                     f"{pb['workspace_bytes'] / 2**20:.2f}",
                     _fmt(pb.get("grad_max_rel_err"), ".1e")])
    return rows


def scaling_rows(records: list[dict]) -> list[list[str]]:
    rows = []
    for rec in records:
        pb = rec.get("pullback") or {}
        cs = rec["contenders"]

        def ms(name: str) -> str:
            c = cs.get(name) or {}
            return _fmt(c.get("median_ms"), ".3f") if c.get("available") else "-"

        status = rec["status"] if pb.get("available") or rec["status"] != "ok" else "pullback n/a"
        rows.append([str(rec["sizes"].get("steps", rec["name"])), status,
                     _fmt(pb.get("trace_s", 0) + pb.get("autodiff_s", 0) if pb.get("available") else None, ".2f"),
                     _fmt(pb.get("compile_cold_s"), ".2f"), _fmt(pb.get("compile_cached_s"), ".3f"),
                     ms("pullback"), ms("numpy"), _fmt((cs.get("numpy") or {}).get("pullback_ratio"), ".2f"),
                     ms("jax"), _fmt((cs.get("jax") or {}).get("setup_s"), ".2f"), ms("torch")])
    return rows


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
