"""Saved activations: which forward values the backward pass keeps, and which it recomputes.

The joint graph of `grad`/`value_and_grad`/`vjp` is a copy of the forward graph (same
node ids) followed by backward nodes with larger ids. The forward values that backward
nodes read are the *residuals*. Keeping them all is the simplest policy; recomputing the
cheap ones inside the backward pass from fewer, smaller saved values is often better.
As PyTorch's min-cut rematerialization partitioner (and Enzyme) do, the choice is a
minimum s-t cut (networkx.minimum_cut) of a flow network built from the forward graph:

- every forward value v is split into v_in -> v_out, capacity = its bytes: cutting that
  edge means *saving* v (computed in the forward pass, read in the backward pass);
- the source feeds every recomputable v_in with a small capacity = its recompute work, so
  the cut also pays for each value recomputed in the backward pass (a tie-breaker: the
  byte capacities are scaled so that bytes always dominate);
- operand -> user edges u_out -> v_in have infinite capacity: a value recomputed in the
  backward pass needs its operands available there too;
- each value a backward node reads has v_out -> sink, infinite;
- ops never to be recomputed (kind "matmul" or "other", and reductions whose output is
  under a quarter of their input, PyTorch's rule) are tied to the source with infinite
  capacity, so they can only be saved. Their incoming edges then never cross the cut and
  are dropped, which splits an unrolled loop into one small region per step. So is any
  value more than MAX_RECOMPUTE_DEPTH recomputable ops away from one of those (or from
  an input): the cut does not see that a long recomputed chain stays alive in the
  backward pass, so without the limit it would "save nothing" and free no memory;
- graph inputs and the graph's outputs are alive for the whole call anyway, so reading
  them in the backward pass costs no memory: they are merged into the sink (free).

The sink side of the cut is "available in the backward pass": nodes whose v_in is on it
are recomputed, forward values read from it are saved. The result minimizes saved bytes
and, among equal-byte plans, recompute work. Regions of identical shape (the steps of
an unrolled loop) are cut once, so planning is linear in the graph's size.

The analysis must run right after the adjoint pass (grad/value_and_grad/vjp), while
the joint graph still shares node ids with the forward graph: optimization passes
renumber and rewire nodes, and `forward_backward_split` refuses a graph whose forward
ids no longer match.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from compiler.autodiff.adjoint import eliminate_dead_code
from compiler.errors import PullbackError
from compiler.ir.graph import Graph
from compiler.ops.registry import get_op

NEVER_RECOMPUTE_KINDS = ("matmul", "other")
REDUCTION_RATIO = 4  # a reduction shrinking its input more than this is never recomputed
MAX_RECOMPUTE_DEPTH = 16  # longest chain of ops recomputed from one saved value (see below)
_SOURCE, _SINK = -1, -2


@dataclass
class Plan:
    """Which forward values the backward pass reads as saved and which it recomputes.

    `saved` lists every forward value (id) the backward pass reads, including graph
    inputs and outputs (`free`: alive anyway, they cost no activation memory).
    Byte counts exclude free values. An unmet budget is a *warning* (`warning`, also
    printed by `saved_report`), not an error: the plan is still the smallest possible;
    callers that must enforce the budget call `check_budget()`.
    """

    saved: list[int]
    recomputed: list[int]
    free: list[int]
    saved_bytes: int  # activation memory of the plan
    recomputed_bytes: int
    before_bytes: int  # activation memory when every residual is kept (no recomputation)
    budget_bytes: int | None = None
    warning: str | None = None
    notes: dict[int, str] = field(default_factory=dict)  # saved value -> why it is never recomputed

    @property
    def after_bytes(self) -> int:
        return self.saved_bytes

    @property
    def within_budget(self) -> bool:
        return self.budget_bytes is None or self.saved_bytes <= self.budget_bytes

    def check_budget(self) -> None:
        if not self.within_budget:
            raise PullbackError(self.warning or "saved activations exceed the memory budget")


def forward_backward_split(joint: Graph, forward: Graph) -> tuple[list[int], list[int]]:
    """(forward ids, backward ids) of `joint`, each sorted.

    Forward ids are the forward graph's ids still present in the joint graph (the adjoint
    pass drops dead forward values); everything else is backward. Valid right after
    grad/value_and_grad/vjp only: a forward id that now names a different node raises.
    """
    forward_ids = []
    for node_id in forward.nx:
        if node_id not in joint:
            continue
        mine, theirs = joint.node(node_id), forward.node(node_id)
        if (mine.op, mine.operands, mine.type) != (theirs.op, theirs.operands, theirs.type):
            raise PullbackError(
                f"{joint.name}: %{node_id} is {mine.op} in the joint graph but {theirs.op} in the forward "
                f"graph {forward.name!r}; run the saved-activation analysis right after grad/value_and_grad, "
                f"before passes renumber the graph"
            )
        forward_ids.append(node_id)
    in_forward = set(forward_ids)
    return sorted(forward_ids), sorted(n for n in joint.nx if n not in in_forward)


def saved_values(joint: Graph, forward: Graph) -> list[int]:
    """Forward values read by backward nodes (the residuals, before rematerialization)."""
    forward_ids, backward_ids = forward_backward_split(joint, forward)
    return _read_by(joint, set(forward_ids), backward_ids)


def never_recompute_reason(graph: Graph, node_id: int) -> str | None:
    """Why a value must be saved rather than recomputed, or None when it is cheap."""
    node = graph.node(node_id)
    kind = get_op(node.op).kind
    if kind in NEVER_RECOMPUTE_KINDS:
        return f"{node.op} is never recomputed"
    if kind == "reduction":
        in_bytes = sum(graph.node(o).type.nbytes for o in node.operands)
        if node.type.nbytes * REDUCTION_RATIO < in_bytes:
            return f"{node.op} shrinks its input more than {REDUCTION_RATIO}x"
    return None


def plan_rematerialization(joint: Graph, forward: Graph, memory_budget_bytes: int | None = None) -> Plan:
    """The min-cut plan: save the fewest bytes, recompute the rest (see the module doc)."""
    budget = memory_budget_bytes
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
        raise PullbackError(f"memory_budget_bytes must be a non-negative int of bytes, got {memory_budget_bytes!r}")
    forward_ids, backward_ids = forward_backward_split(joint, forward)
    in_forward = set(forward_ids)
    readers = _read_by(joint, in_forward, backward_ids)
    outputs = set(joint.outputs)

    def free(v: int) -> bool:
        return joint.node(v).op == "input" or v in outputs

    # The network only needs the values the residuals are computed from, up to the first
    # free or never-recomputed value on each path.
    needed = {v for v in readers if not free(v)}
    network: dict[int, str | None] = {}  # value -> why it is never recomputed (None: it may be)
    stack = list(needed)
    while stack:
        v = stack.pop()
        if v in network:
            continue
        network[v] = never_recompute_reason(joint, v)
        if network[v] is None:
            stack.extend(o for o in joint.node(v).operands if not free(o) and o not in network)
    _limit_recompute_depth(joint, network)

    recomputed = _min_cut(joint, {v: why is not None for v, why in network.items()}, needed)
    saved = _read_by(joint, in_forward - recomputed, backward_ids + sorted(recomputed))
    nbytes = lambda ids: sum(joint.node(v).type.nbytes for v in ids if not free(v))  # noqa: E731
    plan = Plan(saved=saved, recomputed=sorted(recomputed), free=[v for v in saved if free(v)],
                saved_bytes=nbytes(saved), recomputed_bytes=nbytes(recomputed),
                before_bytes=nbytes(readers), budget_bytes=memory_budget_bytes,
                notes={v: network[v] for v in saved if network.get(v)})
    if not plan.within_budget:
        plan.warning = _budget_warning(joint, plan, network)
    return plan


def identity_plan(joint: Graph, forward: Graph) -> Plan:
    """The plan that recomputes nothing: every residual is saved."""
    readers = saved_values(joint, forward)
    outputs = set(joint.outputs)
    free = [v for v in readers if joint.node(v).op == "input" or v in outputs]
    total = sum(joint.node(v).type.nbytes for v in readers if v not in set(free))
    return Plan(saved=readers, recomputed=[], free=free, saved_bytes=total, recomputed_bytes=0, before_bytes=total)


def apply_rematerialization(joint: Graph, forward: Graph, plan: Plan) -> Graph:
    """A copy of `joint` whose backward nodes read recomputed copies of `plan.recomputed`.

    Forward nodes keep their ids; the backward nodes are re-added after them (new, larger
    ids, same order), each preceded by the copies (loc "recompute <op> @ <loc>") it is the
    first to need. The result is id-ordered, so `topo_order` recomputes each value just in
    time rather than whenever its operands are ready. Originals that only the backward
    pass read are removed, so forward intermediates die in the forward pass.
    """
    forward_ids, backward_ids = forward_backward_split(joint, forward)
    in_forward = set(forward_ids)
    for v in plan.recomputed:
        if v not in in_forward or joint.node(v).op == "input":
            raise PullbackError(f"{joint.name}: cannot recompute %{v}: not a computed forward value of this graph")
    order = joint.topo_order()
    rank = {v: i for i, v in enumerate(order)}
    new = Graph(joint.name)  # the forward part, same ids and (immutable) nodes; cheaper than copy()
    new.in_tree, new.out_tree = joint.in_tree, joint.out_tree
    new.nx.add_nodes_from((v, {"node": joint.node(v)}) for v in forward_ids)
    new.nx.add_edges_from((o, v, k, {}) for v in forward_ids for k, o in enumerate(joint.node(v).operands))
    new._next_id = joint._next_id  # backward nodes and copies come after every existing id
    new.capture_locations = False  # copied nodes keep their loc, even None
    pending = set(plan.recomputed)
    moved: dict[int, int] = {v: v for v in forward_ids}  # joint id -> id in `new`
    copies: dict[int, int] = {}
    for b in order:
        if b in in_forward:
            continue
        node = joint.node(b)
        wanted, batch = [o for o in node.operands if o in pending], set()
        while wanted:
            v = wanted.pop()
            if v in pending and v not in batch:
                batch.add(v)
                wanted.extend(joint.node(v).operands)
        for v in sorted(batch, key=rank.__getitem__):
            original = joint.node(v)
            loc = f"recompute {original.op} @ {original.loc}" if original.loc else f"recompute {original.op}"
            copies[v] = new.add_node(original.op, tuple(copies.get(o, o) for o in original.operands),
                                     dict(original.attrs), type=original.type, loc=loc)
        pending -= batch
        operands = tuple(copies[o] if o in copies else moved[o] for o in node.operands)
        moved[b] = new.add_node(node.op, operands, dict(node.attrs), type=node.type, loc=node.loc)
    new.capture_locations = True
    new.inputs = [moved[i] for i in joint.inputs]
    new.outputs = [moved[o] for o in joint.outputs]
    eliminate_dead_code(new)
    return new


def saved_report(joint: Graph, forward: Graph, plan: Plan | None = None) -> str:
    """A table of the saved values: name, op, type, bytes, why, source line; then totals.

    Names are those `compiler.dump(joint)` prints. Without a plan, the min-cut plan is used.
    """
    from compiler.ir.printer import value_names

    plan = plan if plan is not None else plan_rematerialization(joint, forward)
    names = value_names(joint)
    free = set(plan.free)
    outputs = set(joint.outputs)
    header = ("value", "op", "type", "bytes", "note", "source")
    rows = []
    for v in plan.saved:
        node = joint.node(v)
        if node.op == "input":
            note, source = f"{node.attrs['kind']} input, alive anyway", node.loc or ""
        elif v in outputs:
            note, source = "graph output, alive anyway", node.loc or ""
        else:
            note, source = plan.notes.get(v) or never_recompute_reason(joint, v) or "", node.loc or ""
        size = "0" if v in free else f"{node.type.nbytes:,}"
        rows.append(("%" + names[v], node.op, str(node.type), size, note, source))
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:  # bytes right-aligned, the rest left-aligned
        cells = (c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        return ("  " + "  ".join(cells)).rstrip()

    activations = len(plan.saved) - len(free)
    residuals = [v for v in saved_values(joint, forward) if joint.node(v).op != "input" and v not in outputs]
    lines = [f"saved activations of {joint.name}", line(header)] + [line(r) for r in rows]
    lines.append(f"recomputed in the backward pass: {len(plan.recomputed)} value(s), {plan.recomputed_bytes:,} bytes")
    lines.append(f"before rematerialization: {plan.before_bytes:,} bytes in {len(residuals)} activation(s)")
    if plan.warning:
        lines.append(f"warning: {plan.warning}")
    lines.append(f"total saved: {plan.saved_bytes:,} bytes in {activations} activation(s) "
                 f"(+ {len(free)} input/output value(s), alive anyway)")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- helpers
def _read_by(graph: Graph, values: set[int], readers: list[int]) -> list[int]:
    return sorted({o for r in readers for o in graph.node(r).operands if o in values})


def _limit_recompute_depth(graph: Graph, network: dict[int, str | None]) -> None:
    """Mark every value deeper than MAX_RECOMPUTE_DEPTH recomputable ops as never recomputed.

    The cut only counts bytes alive between the passes. A long recomputed chain (an
    elementwise recurrence has no matmul to stop it) is recomputed whole at its first
    use and then stays alive through the backward pass, so bounding the depth (as
    PyTorch bans long fusible chains) keeps the cut's byte count honest: the chain is
    split into checkpointed segments. It also splits the network into small regions.
    """
    rank = {v: i for i, v in enumerate(graph.topo_order())}
    depth: dict[int, int] = {}
    for v in sorted(network, key=rank.__getitem__):
        if network[v] is not None:
            depth[v] = 0
            continue
        depth[v] = 1 + max((depth[o] for o in graph.node(v).operands if o in network), default=0)
        if depth[v] > MAX_RECOMPUTE_DEPTH:
            network[v], depth[v] = f"recompute chain longer than {MAX_RECOMPUTE_DEPTH} ops", 0


def _min_cut(graph: Graph, candidates: dict[int, bool], needed: set[int]) -> set[int]:
    """The values to recompute. `candidates` maps each network value to "never recompute".

    The network falls apart into independent regions once edges into never-recomputed
    values are dropped (e.g. one per step of an unrolled RNN); cutting each region on its
    own gives the same optimum and keeps the planner linear in the number of regions.
    """
    parent = {v: v for v in candidates}

    def find(v: int) -> int:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for v, banned in candidates.items():
        if not banned:
            for operand in graph.node(v).operands:
                if operand in candidates:
                    parent[find(operand)] = find(v)
    regions: dict[int, list[int]] = {}
    for v in candidates:
        regions.setdefault(find(v), []).append(v)
    recomputed: set[int] = set()
    solved: dict[tuple, list[int]] = {}  # unrolled loops repeat one region shape: cut it once
    for members in regions.values():
        if all(candidates[v] for v in members) or not any(v in needed for v in members):
            continue
        members.sort()
        index = {v: i for i, v in enumerate(members)}
        shape = tuple((candidates[v], v in needed, graph.node(v).type.nbytes, graph.node(v).type.size,
                       tuple(index.get(o, -1) for o in graph.node(v).operands)) for v in members)
        if shape not in solved:
            solved[shape] = [index[v] for v in _cut_region(graph, members, candidates, needed)]
        recomputed.update(members[i] for i in solved[shape])
    return recomputed


def _cut_region(graph: Graph, members: list[int], candidates: dict[int, bool], needed: set[int]) -> set[int]:
    work = {v: max(1, graph.node(v).type.size) for v in members if not candidates[v]}
    scale = 1 + sum(work.values())  # one byte outweighs all recompute work: bytes first
    net = nx.DiGraph()
    net.add_nodes_from((_SOURCE, _SINK))
    for v in members:
        saving = graph.node(v).type.nbytes * scale
        if v in needed:
            net.add_edge(2 * v + 1, _SINK)  # no capacity: infinite
        if candidates[v]:  # v_in is merged into the source: v can only be saved
            net.add_edge(_SOURCE, 2 * v + 1, capacity=saving)
            continue
        net.add_edge(_SOURCE, 2 * v, capacity=work[v])
        net.add_edge(2 * v, 2 * v + 1, capacity=saving)
        for operand in set(graph.node(v).operands):
            if operand in candidates:  # free operands are always available: no constraint
                net.add_edge(2 * operand + 1, 2 * v)
    _, (_, sink_side) = nx.minimum_cut(net, _SOURCE, _SINK)
    return {v for v in work if 2 * v in sink_side}


def _budget_warning(graph: Graph, plan: Plan, network: dict[int, str | None]) -> str:
    """Name the never-recomputed values the saved ones are kept because of (largest first)."""
    blockers, seen = set(), set()
    stack = [v for v in plan.saved if v in network]
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if network[v] is not None:
            blockers.add(v)
        else:
            stack.extend(o for o in graph.node(v).operands if o in network)
    culprits = sorted(blockers, key=lambda v: (-graph.node(v).type.nbytes, v))[:3]
    named = ", ".join(f"{graph.node(v).op} @ {graph.node(v).loc or '?'} ({graph.node(v).type.nbytes:,} bytes)"
                      for v in culprits)
    hint = f"; it would take recomputing {named}" if named else ""
    return (f"memory budget of {plan.budget_bytes:,} bytes cannot be met: the minimum without recomputing "
            f"matmul/other ops or large reductions is {plan.saved_bytes:,} bytes{hint}")
