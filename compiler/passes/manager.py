"""Passes and the pass manager.

A pass is a small frozen dataclass with a kebab-case `name` and `apply(graph) -> bool`:
it rewrites the graph in place and says whether it changed anything. One job per pass.

`PassManager` runs passes in order and calls its instruments around each one (TVM's
pass instruments, xDSL's callback): timing and node counts always; verification between
passes in debug mode (verify_each=True or PULLBACK_DEBUG=1); and, with a dump_dir, the IR
after every pass as numbered files 000_input.txt, 001_dce.txt, ... (plus .dot files).
"""
from __future__ import annotations

import contextlib
import gc
import os
import time
from dataclasses import dataclass
from typing import ClassVar, Iterator, Sequence

from compiler.errors import VerifyError
from compiler.ir.graph import Graph


@dataclass(frozen=True)
class Pass:
    """Base class: subclasses set `name` and implement `apply`."""

    name: ClassVar[str] = "pass"

    def apply(self, graph: Graph) -> bool:
        raise NotImplementedError

    def __call__(self, graph: Graph) -> bool:
        return self.apply(graph)


class Instrument:
    """Hooks a PassManager calls: once on the input graph, then around each pass (`index`
    counts passes from 1). Subclass it, or pass any object with some of these methods.
    """

    def run_on_input(self, graph: Graph) -> None:
        pass

    def run_before_pass(self, index: int, pass_: Pass, graph: Graph) -> None:
        pass

    def run_after_pass(self, index: int, pass_: Pass, graph: Graph, changed: bool) -> None:
        pass


@dataclass
class PassRecord:
    index: int
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    changed: bool

    def __str__(self) -> str:
        return (f"{self.index:3d} {self.name:<12} {self.seconds * 1000:9.2f} ms  "
                f"{self.nodes_before:7d} -> {self.nodes_after:7d} nodes{'' if self.changed else '  (no change)'}")


class VerifyEach(Instrument):
    """Verify the input and the graph after every pass; the error names the pass."""

    def run_on_input(self, graph: Graph) -> None:
        _verify(graph, "the pipeline's input graph")

    def run_after_pass(self, index: int, pass_: Pass, graph: Graph, changed: bool) -> None:
        _verify(graph, f"pass {index} {pass_.name!r}")


def _verify(graph: Graph, what: str) -> None:
    from compiler.ir.verify import verify

    try:
        verify(graph)
    except VerifyError as exc:
        raise VerifyError(f"after {what}: {exc}") from exc


class DumpIR(Instrument):
    """Write the IR before the first pass and after each one: 000_input.txt, 001_dce.txt..."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)

    def run_on_input(self, graph: Graph) -> None:
        self.write(0, "input", graph)

    def run_after_pass(self, index: int, pass_: Pass, graph: Graph, changed: bool) -> None:
        self.write(index, pass_.name, graph)

    def write(self, index: int, name: str, graph: Graph) -> None:
        from compiler.ir.dot import to_dot
        from compiler.ir.printer import dump

        stem = os.path.join(self.directory, f"{index:03d}_{name}")
        for suffix, render in ((".txt", dump), (".dot", to_dot)):
            with open(stem + suffix, "w", encoding="utf-8") as handle:
                handle.write(render(graph))


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (nests; restores the previous state).

    Passes allocate many small acyclic objects; on an 80k-node graph the collector's full
    collections took a third of the passes' time (and half of Graph.copy's).
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


class PassManager:
    """Run `passes` in order on a graph, in place. `records` holds one PassRecord per pass run."""

    def __init__(self, passes: Sequence[Pass], verify_each: bool | None = None,
                 dump_dir: str | os.PathLike | None = None, instruments: Sequence[Instrument] = ()) -> None:
        if verify_each is None:
            verify_each = os.environ.get("PULLBACK_DEBUG", "") not in ("", "0")
        self.passes = list(passes)
        self.instruments: list[Instrument] = []
        if verify_each:
            self.instruments.append(VerifyEach())
        if dump_dir is not None:
            self.instruments.append(DumpIR(dump_dir))
        self.instruments.extend(instruments)
        self.records: list[PassRecord] = []

    def run(self, graph: Graph) -> Graph:
        self.records = []
        with gc_paused():
            self._run(graph)
        return graph

    def _run(self, graph: Graph) -> None:
        self._notify("run_on_input", graph)
        for index, pass_ in enumerate(self.passes, start=1):
            self._notify("run_before_pass", index, pass_, graph)
            before = len(graph)
            start = time.perf_counter()
            changed = bool(pass_.apply(graph))
            seconds = time.perf_counter() - start
            self.records.append(PassRecord(index, pass_.name, seconds, before, len(graph), changed))
            self._notify("run_after_pass", index, pass_, graph, changed)

    def _notify(self, hook: str, *args: object) -> None:
        for instrument in self.instruments:
            method = getattr(instrument, hook, None)
            if method is not None:
                method(*args)

    def report(self) -> str:
        """The timing table: one line per pass, then the total."""
        lines = [str(record) for record in self.records]
        total = sum(record.seconds for record in self.records)
        if self.records:
            lines.append(f"    {'total':<12} {total * 1000:9.2f} ms  "
                         f"{self.records[0].nodes_before:7d} -> {self.records[-1].nodes_after:7d} nodes")
        return "\n".join(lines)
