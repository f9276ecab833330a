"""The stage graph: the contract between the compiler, the executor and the runners.

A graph is a JSON document (the manual's stage graph reference). The compiler builds one
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from s2d_plan.cluster import ClusterSpec
from s2d_plan.contract import MAX_GPU_HOURS, Stage, Tracking, shown_value, validation_problems
from s2d_plan.errors import GraphError

GRAPH_VERSION = 1
MAX_STAGES = 2000
MAX_DEPTH = 32  # JSON nesting (a compiled graph reaches about 8)
MAX_TRIALS = 100_000
_INT32 = 2**31 - 1


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Sensitive(_Frozen):
    constant: str  # an outcome constant (s2d_plan.predict.priors)
    assumed: bool  # its range is our judgement and the evidence has not narrowed it
    low: float  # the range it was moved across
    high: float
    flips_to: str | None = None  # the structure chosen instead somewhere in that range


class Band(_Frozen):
    """The prediction of the recommended pipeline: ``value`` is the predictive median,
    ``low``/``high`` the 80% interval of what one run would measure."""

    eval: str = Field(max_length=256)  # the objective eval set the value refers to
    value: float = Field(ge=-1, le=2)  # predicted accuracy in [0, 1]
    low: float = Field(ge=-1, le=2)
    high: float = Field(ge=-1, le=2)
    mean: float | None = None  # predictive mean (what the choice maximizes)
    p_best: float | None = None  # probability it measures highest of the candidates
    p_beats_direct: float | None = None  # probability it measures above direct GRPO on the student
    sensitive: tuple[Sensitive, ...] = ()  # constants the choice depends on


class GraphEstimate(_Frozen):
    gpu_hours: float = Field(default=0.0, ge=0, le=MAX_GPU_HOURS)


class StageGraph(_Frozen):
    version: int = Field(default=GRAPH_VERSION, ge=1, le=GRAPH_VERSION)
    plan: str = Field(max_length=256)
    plan_hash: str = Field(default="", max_length=128)
    predicted: Band | None = None
    estimated: GraphEstimate = GraphEstimate()
    stages: tuple[Stage, ...] = Field(max_length=MAX_STAGES)
    tracking: Tracking | None = None  # trackers the runners also log to (the plan's `tracking`)
    # Anything the compiler wants to keep with the graph (allocation, rationale).
    meta: dict[str, Any] = Field(default_factory=dict)
    # Where the stages run (the plan's ``compute.cluster``); None: local processes.
    cluster: ClusterSpec | None = None

    @model_validator(mode="after")
    def _check_structure(self) -> StageGraph:
        problems = structure_problems(self) + trial_problems(self.meta.get("trials"))
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


def trial_problems(trials: Any) -> list[str]:
    """What the history could not store of ``meta.trials`` (the allocator's search, kept
    in the graph): a number outside INTEGER, a value that is not a finite number."""
    if trials is None:
        return []
    if not isinstance(trials, list) or len(trials) > MAX_TRIALS:
        return [f"meta.trials: expected a list of at most {MAX_TRIALS} trials"]
    for i, t in enumerate(trials):
        if not isinstance(t, dict):
            return [f"meta.trials[{i}]: expected a mapping, got {type(t).__name__}"]
        number = t.get("number")
        if number is not None and (not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= _INT32):
            return [f"meta.trials[{i}].number: expected a trial number in [0, {_INT32}], got {shown_value(number)}"]
        for key in ("value", "gpu_hours"):
            v = t.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not _below(v, 1e12)):
                return [f"meta.trials[{i}].{key}: expected a finite number below 1e12, got {shown_value(v)}"]
    return []


def _below(v: int | float, bound: float) -> bool:
    try:
        return abs(float(v)) < bound  # False for NaN
    except OverflowError:  # an int beyond any float
        return False


def nesting_problem(raw: Any, limit: int = MAX_DEPTH) -> str | None:
    """Whether ``raw`` (parsed JSON) nests deeper than ``limit``; iterative, so a
    hostile file cannot exhaust the stack here."""
    todo = [(raw, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return f"nested more than {limit} levels deep"
            todo.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return None


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


class DuplicateKey(ValueError):
    def __init__(self, key: str):
        self.key = key
        super().__init__(key)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' object hook: a dict, or DuplicateKey (YAML plans refuse them too)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def load_graph(path: str | Path) -> StageGraph:
    """Read and check a stage graph file; raise GraphError with every problem found."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(), object_pairs_hook=_unique_keys)
    except DuplicateKey as exc:
        raise GraphError(f"{path}: not a stage graph: duplicate key {shown_value(exc.key)} in one object "
                         "(JSON would keep only the last one)") from None
    except FileNotFoundError:
        raise GraphError(f"{path}: no such file") from None
    except RecursionError:
        raise GraphError(f"{path}: not a stage graph: nested more than {MAX_DEPTH} levels deep") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, or an integer of 5000 digits
        raise GraphError(f"{path}: not a JSON stage graph ({str(exc)[:200]})") from None
    return parse_graph(raw, source=str(path))


def parse_graph(raw: Any, source: str = "graph") -> StageGraph:
    """Check a graph read from JSON; GraphError lists every problem, each naming the
    stage (by id) and the field."""
    if not isinstance(raw, dict):
        raise GraphError(f"{source}: a stage graph is a JSON object with 'stages'")
    deep = nesting_problem(raw)
    if deep:
        raise GraphError(f"{source}: not a stage graph: {deep}")
    try:
        return StageGraph.model_validate(raw)
    except ValidationError as exc:
        stages = raw.get("stages") if isinstance(raw.get("stages"), list) else []
        lines = []
        for loc, msg in validation_problems(exc):
            where = ".".join(map(str, loc))
            if len(loc) >= 2 and loc[0] == "stages" and isinstance(loc[1], int) and loc[1] < len(stages):
                sid = stages[loc[1]].get("id") if isinstance(stages[loc[1]], dict) else None
                rest = ".".join(map(str, loc[2:]))
                where = (f"stage {shown_value(sid)}" if isinstance(sid, str) and sid else f"stages[{loc[1]}]") \
                    + (f" {rest}" if rest else "")
            lines.append(f"{where}: {msg}" if where else msg)
        raise GraphError(f"{source}: invalid stage graph:\n  " + "\n  ".join(lines)) from None
