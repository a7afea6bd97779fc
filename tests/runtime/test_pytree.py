"""runtime.pytree: flatten/unflatten, leaf paths, and the treedef text form."""
import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.pytree import (LEAF, TreeError, flatten, leaf_paths, num_leaves, treedef_from_text, treedef_to_text,
                            unflatten)


# --------------------------------------------------------------- flatten
def test_flatten_depth_first_with_sorted_dict_keys():
    tree = {"b": [1, (2, 3)], "a": 4, "c": {"y": 5, "x": 6}}
    leaves, treedef = flatten(tree)
    assert leaves == [4, 1, 2, 3, 6, 5]
    assert treedef == {"a": LEAF, "b": [LEAF, (LEAF, LEAF)], "c": {"x": LEAF, "y": LEAF}}
    assert list(treedef) == ["a", "b", "c"] and list(treedef["c"]) == ["x", "y"]


def test_flatten_leaves_and_empty_subtrees():
    assert flatten(7) == ([7], LEAF)
    array = np.zeros(3)
    leaves, treedef = flatten((array,))
    assert leaves[0] is array and treedef == (LEAF,)
    assert flatten(None) == ([], None)
    assert flatten([None, (), {}, []]) == ([], [None, (), {}, []])


def test_namedtuples_and_other_objects_are_leaves():
    Point = collections.namedtuple("Point", "x y")
    p = Point(1, 2)
    assert flatten([p, "text", 3.5]) == ([p, "text", 3.5], [LEAF, LEAF, LEAF])


def test_is_leaf_stops_the_walk():
    leaves, treedef = flatten({"w": (1, 2), "b": 3}, is_leaf=lambda node: isinstance(node, tuple))
    assert leaves == [3, (1, 2)] and treedef == {"b": LEAF, "w": LEAF}


def test_mixed_dict_keys_sort_by_repr():
    leaves, treedef = flatten({"b": 1, 2: 2, "a": 3})
    assert list(treedef) == ["a", "b", 2] and leaves == [3, 1, 2]


# ------------------------------------------------------------- unflatten
def test_unflatten_inverts_flatten():
    tree = {"layers": [{"W": 1, "b": 2}, {"W": 3, "b": 4}], "affine": (5, None, 6)}
    leaves, treedef = flatten(tree)
    assert unflatten(treedef, leaves) == tree
    assert unflatten(treedef, [x * 10 for x in leaves])["affine"] == (50, None, 60)
    assert unflatten(LEAF, ["only"]) == "only"
    assert unflatten(None, []) is None


def test_unflatten_keeps_container_types():
    rebuilt = unflatten([LEAF, (LEAF,), {"k": LEAF}], [1, 2, 3])
    assert rebuilt == [1, (2,), {"k": 3}]
    assert type(rebuilt) is list and type(rebuilt[1]) is tuple


def test_unflatten_errors():
    with pytest.raises(TreeError, match="too few leaves: the tree needs 2, got 1"):
        unflatten((LEAF, LEAF), [1])
    with pytest.raises(TreeError, match="too many leaves: the tree needs 2, got 3"):
        unflatten((LEAF, LEAF), [1, 2, 3])
    with pytest.raises(TreeError, match="not a treedef node: 5"):
        unflatten((LEAF, 5), [1])


def test_num_leaves_and_paths():
    treedef = {"a": [LEAF, (LEAF, None)], "b": LEAF}
    assert num_leaves(treedef) == 3
    assert num_leaves(None) == 0 and num_leaves(LEAF) == 1 and num_leaves(()) == 0
    assert leaf_paths(treedef) == [("a", 0), ("a", 1, 0), ("b",)]
    assert leaf_paths(LEAF) == [()]
    assert leaf_paths((LEAF, [LEAF])) == [(0,), (1, 0)]


def test_num_leaves_rejects_non_treedefs():
    with pytest.raises(TreeError):
        num_leaves((LEAF, 5))


# ------------------------------------------------------------------ text
@pytest.mark.parametrize("treedef, text", [
    (LEAF, "*"),
    (None, "None"),
    ((), "()"),
    ((LEAF,), "(*,)"),
    ((LEAF, LEAF), "(*, *)"),
    ([], "[]"),
    ([LEAF], "[*]"),
    ({}, "{}"),
    ({"W1": LEAF, "b1": LEAF}, "{'W1': *, 'b1': *}"),
    (({"W1": LEAF, "b1": LEAF}, LEAF, LEAF), "({'W1': *, 'b1': *}, *, *)"),
    ({"a": [LEAF, (LEAF, None)], 3: LEAF}, "{'a': [*, (*, None)], 3: *}"),
    ({"it's": LEAF}, '{"it\'s": *}'),
])
def test_text_round_trips(treedef, text):
    assert treedef_to_text(treedef) == text
    parsed = treedef_from_text(text)
    assert parsed == treedef and type(parsed) is type(treedef)
    assert treedef_to_text(parsed) == text


def test_text_tolerates_spacing():
    assert treedef_from_text("  ( * ,{ 'a' :* } )  ") == (LEAF, {"a": LEAF})
    assert treedef_from_text("*, *") == (LEAF, LEAF)  # a bare tuple, as Python reads it


@pytest.mark.parametrize("text, problem", [
    ("", "invalid syntax"),
    ("(*", "malformed tree"),
    ("2 * 3", "invalid syntax"),
    ("**", "invalid syntax"),
    ("x", "malformed node"),
    ("print(1)", "malformed node"),
    ("'a'", "unexpected 'a'"),
    ("(*, 1)", "unexpected 1"),
    ("{*}", "unexpected"),
    ("[" * 300 + "]" * 300, "malformed tree"),
])
def test_text_errors(text, problem):
    with pytest.raises(TreeError, match="malformed tree") as info:
        treedef_from_text(text)
    assert problem in str(info.value)


def test_to_text_rejects_non_treedefs():
    with pytest.raises(TreeError, match="not a treedef node: 5"):
        treedef_to_text((LEAF, 5))


def test_text_rejects_leaf_as_dict_key():
    with pytest.raises(TreeError):
        treedef_from_text("{*: *}")


def _treedefs():
    keys = st.text(alphabet="abcxyz_'\" 0", min_size=1, max_size=4)
    return st.recursive(
        st.sampled_from([LEAF, None]),
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(keys, children, max_size=3).map(lambda d: {k: d[k] for k in sorted(d)}),
        ),
        max_leaves=10,
    )


@settings(max_examples=200, deadline=None)
@given(_treedefs())
def test_text_round_trip_property(treedef):
    text = treedef_to_text(treedef)
    assert treedef_from_text(text) == treedef
    assert treedef_to_text(treedef_from_text(text)) == text
    leaves = list(range(num_leaves(treedef)))
    assert flatten(unflatten(treedef, leaves), is_leaf=lambda x: isinstance(x, int)) == (leaves, treedef)
