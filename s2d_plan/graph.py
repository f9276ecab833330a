"""The stage graph: the contract between the compiler, the executor and the runners.

A graph is a JSON document (see DESIGN.md, "Stage graph JSON"). The compiler builds one
from an allocation; the executor reads one back, checks it, and runs its stages in
dependency order. Validation lives here so that both ends agree on what a good graph is.

References: a stage's ``policy`` / ``teacher`` may be a model (registry name, hub id or
local path) or ``@stage_id`` (the checkpoint that stage produced); a string under
``data`` that starts with ``@`` names a dataset a stage produced (teacher rollouts).

    >>> g = StageGraph.model_validate({"plan": "p", "stages": [
    ...     {"id": "a", "kind": "grpo", "policy": "Qwen/Qwen3-8B"},
    ...     {"id": "b", "kind": "eval", "policy": "@a", "needs": ["a"]}]})
    >>> [s.id for s in g.topological_order()]
    ['a', 'b']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from s2d_plan.errors import GraphError

GRAPH_VERSION = 1

# Kinds are a closed set (DESIGN.md). `simulate` is a deterministic stand-in stage used
# by the executor's own tests and benchmarks; it never appears in a compiled plan.
STAGE_KINDS = ("probe", "grpo", "rollout", "fkl", "opd", "eval", "simulate")
StageKind = Literal["probe", "grpo", "rollout", "fkl", "opd", "eval", "simulate"]
# Kinds whose output is a model checkpoint (what `@stage` means in `policy`/`teacher`).
MODEL_KINDS = frozenset({"grpo", "fkl", "opd", "simulate"})
# Kinds whose output is a dataset (what `@stage` means under `data`).
DATASET_KINDS = frozenset({"rollout", "probe", "simulate"})


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Band(_Frozen):
    eval: str  # the objective eval set the value refers to
    value: float  # predicted accuracy in [0, 1]
    low: float
    high: float


class StageEstimate(_Frozen):
    gpu_hours: float = 0.0
    peak_mem_gb_per_gpu: float = 0.0
    strategy: str | None = None  # "single", "fsdp", "lora" ... (cost model's choice)


class GraphEstimate(_Frozen):
    gpu_hours: float = 0.0


class Resources(_Frozen):
    gpus: int = Field(default=1, ge=0)


class Stage(_Frozen):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: StageKind
    policy: str  # model name/path or @stage_id
    teacher: str | None = None  # distillation kinds: model name/path or @stage_id
    needs: tuple[str, ...] = ()
    # Which data the stage reads. `labeled` / `prompts` are slices of the plan's pools:
    # {"source", "problem_field", "answer_field", "offset", "count"}; `eval` is a list of
    # named eval sets; a "@stage" string names a dataset a stage produced.
    data: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)  # kind-specific (see runners/)
    resources: Resources = Resources()
    estimated: StageEstimate = StageEstimate()

    def references(self) -> Iterator[tuple[str, str]]:
        """Yield (field, stage_id) for every ``@stage`` reference this stage makes."""
        for name in ("policy", "teacher"):
            value = getattr(self, name)
            if isinstance(value, str) and value.startswith("@"):
                yield name, value[1:]
        for name, value in self.data.items():
            if isinstance(value, str) and value.startswith("@"):
                yield f"data.{name}", value[1:]

    def labels_spent(self) -> int:
        """How many labeled examples this stage consumes (0 if none)."""
        labeled = self.data.get("labeled")
        # a probe reads labeled prompts to measure solve rates but trains on nothing:
        # it marks its slice "spend": false and does not count against the budget
        if isinstance(labeled, dict) and labeled.get("spend", True):
            return int(labeled.get("count", 0))
        return 0


class StageGraph(_Frozen):
    version: int = GRAPH_VERSION
    plan: str
    plan_hash: str = ""
    predicted: Band | None = None
    estimated: GraphEstimate = GraphEstimate()
    stages: tuple[Stage, ...]
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
        if s.kind in ("opd", "fkl") and not s.teacher and "rollouts" not in s.data:
            problems.append(f"stage {s.id!r}: kind {s.kind} needs a teacher or rollouts")
    cycle = _find_cycle({s.id: [n for n in s.needs if n in known] for s in graph.stages})
    if cycle:
        problems.append("needs form a cycle: " + " -> ".join(cycle))
    return problems


def _find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in edges:
        if node not in state:
            found = visit(node)
            if found:
                return found
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
    if not isinstance(raw, dict):
        raise GraphError(f"{source}: a stage graph is a JSON object with 'stages'")
    try:
        return StageGraph.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "literal_error" and loc.endswith("kind"):
                msg = f"unknown stage kind {err.get('input')!r} (known: {', '.join(STAGE_KINDS)})"
            lines.append(f"{loc}: {msg}" if loc else msg)
        raise GraphError(f"{source}: invalid stage graph:\n  " + "\n  ".join(lines)) from None
