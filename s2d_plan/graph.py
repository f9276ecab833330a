"""The stage graph: the contract between the compiler, the executor and the runners.

A graph is a JSON document (see DESIGN.md, "Stage graph JSON"). The compiler builds one
from an allocation; the executor reads one back, checks it, and runs its stages in
dependency order. Validation lives here so that both ends agree on what a good graph is.

A stage (``s2d_plan.contract.Stage``) is typed: its params are the model of its kind,
its data are slices, its references ``@stage_id`` (see the contract module).

    >>> g = StageGraph.model_validate({"plan": "p", "stages": [
    ...     {"id": "a", "kind": "grpo", "policy": "Qwen/Qwen3-8B"},
    ...     {"id": "b", "kind": "eval", "policy": "@a", "needs": ["a"]}]})
    >>> [s.id for s in g.topological_order()]
    ['a', 'b']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from s2d_plan.contract import Stage, Tracking
from s2d_plan.errors import GraphError

GRAPH_VERSION = 1
MAX_STAGES = 2000


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Band(_Frozen):
    eval: str  # the objective eval set the value refers to
    value: float  # predicted accuracy in [0, 1]
    low: float
    high: float


class GraphEstimate(_Frozen):
    gpu_hours: float = Field(default=0.0, ge=0)


class StageGraph(_Frozen):
    version: int = GRAPH_VERSION
    plan: str
    plan_hash: str = ""
    predicted: Band | None = None
    estimated: GraphEstimate = GraphEstimate()
    stages: tuple[Stage, ...] = Field(max_length=MAX_STAGES)
    tracking: Tracking | None = None  # trackers the runners also log to (the plan's `tracking`)
    # Anything the compiler wants to keep with the graph (allocation, rationale).
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_structure(self) -> "StageGraph":
        problems = structure_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def stage(self, stage_id: str) -> Stage:
        for s in self.stages:
            if s.id == stage_id:
                return s
        raise KeyError(stage_id)

    def topological_order(self) -> list[Stage]:
        """Stages with every stage after all it needs; ties keep file order."""
        done: set[str] = set()
        order: list[Stage] = []
        pending = list(self.stages)
        while pending:
            ready = [s for s in pending if set(s.needs) <= done]
            if not ready:  # unreachable after validation; kept as a guard
                raise GraphError("stage graph has a cycle")
            for s in ready:
                order.append(s)
                done.add(s.id)
            pending = [s for s in pending if s.id not in done]
        return order

    def dependants(self, stage_id: str) -> set[str]:
        """Every stage that needs ``stage_id``, directly or transitively."""
        out: set[str] = set()
        frontier = {stage_id}
        while frontier:
            nxt = {s.id for s in self.stages if set(s.needs) & frontier} - out
            out |= nxt
            frontier = nxt
        return out

    def labels_spent(self) -> int:
        return sum(s.labels_spent() for s in self.stages)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=1)


def structure_problems(graph: StageGraph) -> list[str]:
    """Every structural problem of a graph, as readable sentences (empty when sound)."""
    problems: list[str] = []
    ids = [s.id for s in graph.stages]
    seen: set[str] = set()
    for sid in ids:
        if sid in seen:
            problems.append(f"stage id {sid!r} appears twice")
        seen.add(sid)
    known = set(ids)
    for s in graph.stages:
        for need in s.needs:
            if need not in known:
                problems.append(f"stage {s.id!r}: needs {need!r}, which is not a stage")
        for field, ref in s.references():
            if ref not in known:
                problems.append(f"stage {s.id!r}: {field} refers to @{ref}, which is not a stage")
            elif ref not in s.needs:
                problems.append(f"stage {s.id!r}: {field} refers to @{ref} but does not list it in needs")
        if s.kind in ("opd", "fkl") and not s.teacher and s.data.rollouts is None:
            problems.append(f"stage {s.id!r}: kind {s.kind} needs a teacher or rollouts")
    cycle = _find_cycle({s.id: [n for n in s.needs if n in known] for s in graph.stages})
    if cycle:
        problems.append("needs form a cycle: " + " -> ".join(cycle))
    return problems


def _find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """One cycle of ``edges`` (node -> nodes it needs), or None. Iterative: a chain of
    thousands of stages must not hit Python's recursion limit."""
    state: dict[str, int] = {}  # 1 = on the path, 2 = finished
    for root in edges:
        if root in state:
            continue
        path: list[str] = [root]
        todo: list[Iterator[str]] = [iter(edges.get(root, ()))]
        state[root] = 1
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter(edges.get(nxt, ())))
    return None


def load_graph(path: str | Path) -> StageGraph:
    """Read and check a stage graph file; raise GraphError with every problem found."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise GraphError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GraphError(f"{path}: not a JSON stage graph ({exc})") from None
    return parse_graph(raw, source=str(path))


def parse_graph(raw: Any, source: str = "graph") -> StageGraph:
    """Check a graph read from JSON; GraphError lists every problem, each naming the
    stage (by id) and the field."""
    if not isinstance(raw, dict):
        raise GraphError(f"{source}: a stage graph is a JSON object with 'stages'")
    try:
        return StageGraph.model_validate(raw)
    except ValidationError as exc:
        stages = raw.get("stages") if isinstance(raw.get("stages"), list) else []
        lines = []
        for err in exc.errors():
            loc = list(err["loc"])
            if len(loc) >= 2 and loc[0] == "stages" and isinstance(loc[1], int) and loc[1] < len(stages):
                sid = stages[loc[1]].get("id") if isinstance(stages[loc[1]], dict) else None
                loc[:2] = [f"stage {sid!r}" if sid else f"stages[{loc[1]}]"]
            where = ".".join(str(p) for p in loc).replace("' .", "' ").replace(".", " ", 1) if loc else ""
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {msg}" if where else msg)
        raise GraphError(f"{source}: invalid stage graph:\n  " + "\n  ".join(lines)) from None
