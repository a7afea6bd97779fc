"""Caller-supplied output arrays: the checks behind `kernel(*args, out=...)`.

Native code writes exactly nbytes (shape x itemsize) from each output pointer and assumes
that outputs alias nothing (the code generator marks them noalias). So every check is exact
and runs before native code: structure, exact ndarray, shape, dtype (no conversion: the
results are written as they are), C-contiguous, aligned, writeable, and no memory shared
with an input or another output. Overlap is judged on bounds, as np.may_share_memory does:
each buffer the native code sees is contiguous, so [pointer, pointer + nbytes) is the
exact extent it touches, and comparing extents is cheaper than calling numpy per pair.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from typing import Any, Callable

import numpy as np

from runtime.argtree import compile_leaves, is_container
from runtime.errors import CallError
from runtime.pytree import flatten, leaf_paths, treedef_to_text

_ndarray = np.ndarray
_view = np.ndarray.view


def _out_path(path: tuple) -> str:
    return "out" + "".join(f"[{key!r}]" for key in path)


class OutChecker:
    """Checks one kernel's `out` argument; built once per Kernel, used on each out= call."""

    def __init__(self, label: str, out_tree: Any, outputs: list[dict], in_where: list[str],
                 in_nbytes: tuple[int, ...], data_pointer: Callable[[np.ndarray], int]) -> None:
        self._label = label
        self._tree_text = treedef_to_text(out_tree)
        self._leaves_of = compile_leaves(out_tree)
        where = [f"output {e['name']!r} ({_out_path(p)})" for e, p in zip(outputs, leaf_paths(out_tree))]
        specs = [(tuple(e["shape"]), np.dtype(e["dtype"])) for e in outputs]
        self._plan = tuple((shape, dtype, place) for (shape, dtype), place in zip(specs, where))
        nbytes = [math.prod(shape) * dtype.itemsize for shape, dtype in specs]
        # (index, nbytes) of the buffers that have bytes: an empty one overlaps nothing
        self._sized = tuple((i, n) for i, n in enumerate(nbytes) if n)
        self._in_sized = tuple((i, n) for i, n in enumerate(in_nbytes) if n)
        self._where = where
        self._in_where = in_where
        self._data_pointer = data_pointer

    def __call__(self, out: Any, in_pointers: list[int]) -> tuple[list, list[int]]:
        """(the arrays to keep alive during the call, their data pointers), or CallError.

        `in_pointers` are the buffers native code will read, after any input conversion:
        a converted copy is fresh, but an `__array__` may hand back an output's memory."""
        leaves = self._leaves_of(out) if self._leaves_of is not None else None
        if leaves is None:
            leaves, tree = flatten(out)
            if treedef_to_text(tree) != self._tree_text:
                raise self._structure_error(tree)
        data_pointer = self._data_pointer
        arrays = []
        pointers = []
        for (shape, dtype, where), leaf in zip(self._plan, leaves):
            if type(leaf) is not _ndarray:
                leaf = self._plain_array(leaf, out, where, shape, dtype)
            # flags.carray: C-contiguous, aligned and writeable in one flag test
            if leaf.shape != shape or leaf.dtype != dtype or not leaf.flags.carray:
                raise self._leaf_error(leaf, where, shape, dtype)
            arrays.append(leaf)
            pointers.append(data_pointer(leaf))
        self._check_overlap(pointers, in_pointers)
        return arrays, pointers

    def _plain_array(self, leaf: Any, out: Any, where: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
        if is_container(leaf):  # a container where an array belongs: the structure is wrong
            raise self._structure_error(flatten(out)[1])
        if not isinstance(leaf, _ndarray):
            hint = f"; for a 0-d output pass np.empty((), {dtype.name!r})" if shape == () else ""
            raise CallError(f"{self._label}: {where} must be a numpy ndarray, got {type(leaf).__name__}{hint}")
        # A subclass may override shape, dtype or flags with properties that lie; a base-class
        # view reads the real ones (and the same memory, which the caller keeps in `out`).
        return _view(leaf, _ndarray)

    def _structure_error(self, tree: Any) -> CallError:
        return CallError(
            f"{self._label}: out has structure {treedef_to_text(tree)}, it expects {self._tree_text} "
            "(the structure a call returns: pass a previous call's result, or arrays in that structure)"
        )

    def _leaf_error(self, leaf: np.ndarray, where: str, shape: tuple, dtype: np.dtype) -> CallError:
        flags = leaf.flags
        if leaf.shape != shape:
            problem = f"expects shape {shape}, got {leaf.shape}"
        elif leaf.dtype != dtype:
            problem = f"expects {dtype.name}, got {leaf.dtype} (outputs are not converted: the dtype must match)"
        elif not flags.c_contiguous:
            problem = (f"must be C-contiguous, got strides {leaf.strides} "
                       f"(pass a whole array, or np.empty({shape}, {dtype.name!r}))")
        elif not flags.aligned:
            problem = f"must be aligned to its {dtype.itemsize}-byte elements, its data is at {leaf.ctypes.data:#x}"
        else:
            problem = "is read-only (flags.writeable is False)"
        return CallError(f"{self._label}: {where} {problem}")

    def _check_overlap(self, pointers: list[int], in_pointers: list[int]) -> None:
        # sorted by start, extents are pairwise disjoint iff no two neighbours overlap
        spans = sorted([(pointers[i], pointers[i] + n, i) for i, n in self._sized])
        previous, previous_end = -1, 0
        for start, end, index in spans:
            if start < previous_end:
                first, second = sorted((previous, index))
                raise CallError(
                    f"{self._label}: {self._where[first]} and {self._where[second]} overlap in memory (their "
                    "bounds overlap); every output needs its own buffer"
                )
            previous, previous_end = index, end
        starts = [span[0] for span in spans]
        for index, n in self._in_sized:
            p = in_pointers[index]
            # the disjoint outputs are sorted: only the last one starting before p + n can reach p
            k = bisect_left(starts, p + n)
            if k and spans[k - 1][1] > p:
                raise CallError(
                    f"{self._label}: {self._where[spans[k - 1][2]]} overlaps {self._in_where[index]} in memory "
                    "(their bounds overlap); an output must not share memory with an input"
                )
