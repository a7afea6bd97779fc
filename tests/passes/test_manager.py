"""The pass manager: ordering, verify-each in debug mode, IR dumps, timing records, instruments."""
import dataclasses
import gc
import re
from dataclasses import dataclass
from typing import ClassVar

import pytest

import compiler
from compiler import Spec, ops
from compiler.errors import VerifyError
from compiler.ir.types import TensorType
from compiler.passes import ALL_PASSES, Instrument, Pass, PassManager
from compiler.pipeline import passes_for


@dataclass(frozen=True)
class BreakTypes(Pass):
    """A buggy pass: declares a wrong type on the output."""

    name: ClassVar[str] = "break-types"

    def apply(self, graph):
        graph.replace_node(graph.outputs[0], type=TensorType((7,), "float32"))
        return True


def _graph():
    return compiler.trace(lambda x: ops.tanh(x * 1.0) + ops.tanh(x * 1.0), Spec((3,)))


def test_verify_each_names_the_pass_that_broke_the_graph():
    manager = PassManager([*passes_for(1)[:2], BreakTypes()], verify_each=True)
    with pytest.raises(VerifyError, match=r"after pass 3 'break-types': %\d+ = add .*declared type f32\[7\]"):
        manager.run(_graph())


def test_without_debug_mode_nothing_is_verified(monkeypatch):
    monkeypatch.delenv("PULLBACK_DEBUG", raising=False)
    PassManager([BreakTypes()]).run(_graph())  # no error: verification is a debug aid


def test_pullback_debug_turns_verification_on(monkeypatch):
    monkeypatch.setenv("PULLBACK_DEBUG", "1")
    with pytest.raises(VerifyError, match="break-types"):
        PassManager([BreakTypes()]).run(_graph())


def test_a_broken_input_is_reported_as_such():
    graph = _graph()
    graph.outputs = []
    with pytest.raises(VerifyError, match="after the pipeline's input graph: .* has no outputs"):
        PassManager(passes_for(1), verify_each=True).run(graph)


def test_dump_dir_gets_numbered_text_and_dot_files(tmp_path):
    graph = _graph()
    passes = passes_for(2)
    PassManager(passes, dump_dir=tmp_path / "ir").run(graph)
    stems = [f"{i:03d}_{name}" for i, name in enumerate(["input"] + [p.name for p in passes])]
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == sorted(
        [s + ".txt" for s in stems] + [s + ".dot" for s in stems])
    assert stems[:3] == ["000_input", "001_dce", "002_fold"]
    assert (tmp_path / "ir" / f"{stems[-1]}.txt").read_text() == compiler.dump(graph)
    assert (tmp_path / "ir" / f"{stems[-1]}.dot").read_text() == compiler.to_dot(graph)
    first = compiler.parse((tmp_path / "ir" / "000_input.txt").read_text())
    assert len(first) > len(graph)  # the input was dumped before any pass ran


def test_an_empty_pipeline_still_dumps_and_verifies_its_input(tmp_path):
    graph = _graph()
    PassManager([], dump_dir=tmp_path, verify_each=True).run(graph)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000_input.dot", "000_input.txt"]
    graph.outputs = []
    with pytest.raises(VerifyError, match="input graph"):
        PassManager([], verify_each=True).run(graph)


def test_records_give_time_and_node_counts_per_pass():
    graph = _graph()
    manager = PassManager(passes_for(2))
    manager.run(graph)
    records = manager.records
    assert [r.name for r in records] == [p.name for p in passes_for(2)]
    assert [r.index for r in records] == list(range(1, len(records) + 1))
    assert all(r.seconds >= 0 for r in records)
    assert records[0].nodes_before > records[-1].nodes_after == len(graph)
    assert all(a.nodes_after == b.nodes_before for a, b in zip(records, records[1:]))
    assert [r for r in records if r.name == "dce"][-1].changed is False  # the last dce finds nothing left
    report = manager.report()
    assert re.search(r"^\s+1 dce\s+[\d.]+ ms\s+\d+ ->\s+\d+ nodes", report, re.M)
    assert "total" in report.splitlines()[-1]


def test_custom_instruments_see_every_pass():
    seen = []

    class Recorder(Instrument):
        def run_on_input(self, graph):
            seen.append(("input", len(graph)))

        def run_before_pass(self, index, pass_, graph):
            seen.append(("before", index, pass_.name))

    class AfterOnly:  # a duck-typed instrument with one hook
        def run_after_pass(self, index, pass_, graph, changed):
            seen.append(("after", index, pass_.name))

    graph = _graph()
    PassManager(passes_for(1)[:2], instruments=[Recorder(), AfterOnly()]).run(graph)
    assert seen[0] == ("input", len(_graph()))
    assert seen[1:] == [("before", 1, "dce"), ("after", 1, "dce"), ("before", 2, "fold"), ("after", 2, "fold")]


def test_passes_are_small_frozen_dataclasses_with_kebab_case_names():
    for name, cls in ALL_PASSES.items():
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", name) and cls.name == name
        instance = cls()
        with pytest.raises(dataclasses.FrozenInstanceError):
            instance.x = 1
        assert instance == cls() and hash(instance) == hash(cls())


def test_the_garbage_collector_is_paused_only_while_passes_run():
    states = []

    class Probe(Instrument):
        def run_after_pass(self, index, pass_, graph, changed):
            states.append(gc.isenabled())

    assert gc.isenabled()
    PassManager(passes_for(1)[:1], instruments=[Probe()]).run(_graph())
    assert states == [False] and gc.isenabled()
    gc.disable()
    try:
        PassManager(passes_for(1)[:1]).run(_graph())
        assert not gc.isenabled()  # the caller's choice is kept
    finally:
        gc.enable()
