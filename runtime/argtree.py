"""Fast leaf extraction for one fixed argument tree.

Equivalent to `flatten(args)` plus comparing its treedef text with the expected one, but
specialised to the expected tree so a call does not rebuild and print a treedef. Leaf
positions are not checked here: a container where a leaf belongs fails the per-leaf check
later. Returns None on any mismatch; the caller then runs the generic path for the message.
"""
from __future__ import annotations

from typing import Any, Callable

from runtime.pytree import LEAF

Walker = Callable[[Any, list], bool]


def compile_leaves(treedef: Any) -> Callable[[Any], list | None] | None:
    """A function args -> leaves (or None on mismatch); None if the tree has non-str dict keys."""
    walk = _compile(treedef)
    if walk is None:
        return None

    def leaves(args: Any) -> list | None:
        out: list = []
        return out if walk(args, out) else None

    return leaves


def _compile(node: Any) -> Walker | None:
    if node is LEAF:
        return _leaf
    if node is None:
        return _none
    if isinstance(node, dict):
        if not all(type(key) is str for key in node):
            return None  # keys whose repr is not determined by equality: use the generic path
        keys = tuple(node)
        children = [_compile(node[key]) for key in keys]
        if any(child is None for child in children):
            return None
        plan = tuple(zip(keys, children))

        def walk_dict(value: Any, out: list) -> bool:
            if not isinstance(value, dict) or len(value) != len(plan):
                return False
            for key, child in plan:
                if key not in value or not child(value[key], out):
                    return False
            return True

        return walk_dict
    children = [_compile(child) for child in node]
    if any(child is None for child in children):
        return None
    plan = tuple(children)
    is_tuple = isinstance(node, tuple)

    def walk_sequence(value: Any, out: list) -> bool:
        if is_tuple:
            if not isinstance(value, tuple) or hasattr(value, "_fields"):
                return False
        elif not isinstance(value, list):
            return False
        if len(value) != len(plan):
            return False
        for child, item in zip(plan, value):
            if not child(item, out):
                return False
        return True

    return walk_sequence


def is_container(value: Any) -> bool:
    """True for what runtime.pytree.flatten never treats as a leaf (a leaf slot holding one
    means the caller's structure is wrong)."""
    if value is None or isinstance(value, (list, dict)):
        return True
    return isinstance(value, tuple) and not hasattr(value, "_fields")


def _leaf(value: Any, out: list) -> bool:
    out.append(value)
    return True


def _none(value: Any, out: list) -> bool:
    return value is None


def compile_builder(treedef: Any) -> Callable[[list], Any]:
    """A function leaves -> tree, equivalent to unflatten(treedef, leaves) for the right count."""
    if treedef is LEAF:
        return lambda leaves: leaves[0]
    if isinstance(treedef, tuple) and all(child is LEAF for child in treedef):
        return tuple
    build = _builder(treedef)
    return lambda leaves: build(iter(leaves))


def _builder(node: Any) -> Callable[[Any], Any]:
    if node is LEAF:
        return next
    if node is None:
        return lambda leaves: None
    if isinstance(node, dict):
        plan = tuple((key, _builder(child)) for key, child in node.items())
        return lambda leaves: {key: child(leaves) for key, child in plan}
    children = tuple(_builder(child) for child in node)
    if isinstance(node, tuple):
        return lambda leaves: tuple([child(leaves) for child in children])
    return lambda leaves: [child(leaves) for child in children]
