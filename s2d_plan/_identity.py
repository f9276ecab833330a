"""Stage identity: content keys, runner code versions, resolved inputs.

A stage's key hashes what decides its output: kind, policy/teacher (a model name, or the
key of the ``@stage`` it reads), data (``@stage`` refs by key), params, and the runner's
code version (the source of ``runners/<kind>.py`` + ``runners/common.py``). Resources and
estimates are left out, so moving a stage to more GPUs reuses it. Chaining the keys of
the stages it reads means a changed parameter changes that stage's key and its
dependants' keys, nothing else.

    >>> g = StageGraph.model_validate({"plan": "p", "stages": [
    ...     {"id": "a", "kind": "simulate", "policy": "m", "params": {"steps": 2}}]})
    >>> len(cache_keys(g)["a"])
    16
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from s2d_plan.graph import Stage, StageGraph

RUNNERS_DIR = Path(__file__).resolve().parent.parent / "runners"


@lru_cache(maxsize=None)
def _runner_source(kind: str) -> str:
    parts = []
    for name in (f"{kind}.py", "common.py"):
        path = RUNNERS_DIR / name
        parts.append(path.read_text(encoding="utf-8") if path.exists() else f"<missing {name}>")
    return "\n".join(parts)


def runner_version(kind: str) -> str:
    """A hash of the runner module's source and the shared runner helpers."""
    return hashlib.sha256(_runner_source(kind).encode()).hexdigest()[:16]


def runner_resumes(kind: str) -> bool:
    """Whether ``runners/<kind>.py`` declares ``RESUMABLE = True`` (keep its work dir)."""
    return re.search(r"^RESUMABLE\s*=\s*True\b", _runner_source(kind), re.M) is not None


def cache_keys(graph: StageGraph) -> dict[str, str]:
    """Every stage's content key (16 hex digits), in dependency order."""
    keys: dict[str, str] = {}

    def ref(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("@"):
            return {"stage": keys[value[1:]]}
        return value

    for s in graph.topological_order():
        ident = {"kind": s.kind, "policy": ref(s.policy), "teacher": ref(s.teacher),
                 "data": {k: ref(v) for k, v in sorted(s.data.items())}, "params": s.params,
                 "runner": runner_version(s.kind)}
        text = json.dumps(ident, sort_keys=True, default=str)
        keys[s.id] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return keys


def resolve_inputs(stage: Stage, outputs: dict[str, Path]) -> dict[str, str]:
    """The spec's ``inputs``: models pass through, ``@stage`` becomes its output dir."""
    inputs: dict[str, str] = {}
    for name in ("policy", "teacher"):
        value = getattr(stage, name)
        if value is not None:
            inputs[name] = str(outputs[value[1:]]) if value.startswith("@") else value
    for name, value in stage.data.items():
        if isinstance(value, str) and value.startswith("@"):
            inputs[f"data.{name}"] = str(outputs[value[1:]])
    return inputs
