"""Stage identity: content keys, runner code versions, resolved inputs.

A stage's key hashes what decides its output: kind, policy/teacher (a model name, or the
key of the ``@stage`` it reads), data (``@stage`` refs by key), params, and the runner's
code version (the source of ``runners/<kind>.py`` + every shared runner module). A local
model or data path counts by its files' sizes and modification times. Resources and
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

from s2d_plan.graph import STAGE_KINDS, Stage, StageGraph

RUNNERS_DIR = Path(__file__).resolve().parent.parent / "runners"


@lru_cache(maxsize=None)
def _source(name: str) -> str:
    path = RUNNERS_DIR / name
    return path.read_text(encoding="utf-8") if path.exists() else f"<missing {name}>"


def _shared_runner_modules() -> list[str]:
    """Every runners/*.py that is not itself a stage kind (common, data, verifier, ...):
    a change in any of them can change what every runner produces."""
    return sorted(p.name for p in RUNNERS_DIR.glob("*.py") if p.stem not in STAGE_KINDS)


@lru_cache(maxsize=None)
def runner_version(kind: str) -> str:
    """A hash of the runner module's source and every shared runner module's source."""
    text = "\n".join(_source(name) for name in [f"{kind}.py", *_shared_runner_modules()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def runner_resumes(kind: str) -> bool:
    """Whether ``runners/<kind>.py`` declares ``RESUMABLE = True`` (keep its work dir)."""
    return re.search(r"^RESUMABLE\s*=\s*True\b", _source(f"{kind}.py"), re.M) is not None


def _fingerprint(value: Any) -> Any:
    """A local model or data path stands for its contents: rebuilding the tiny models or
    editing a JSONL file must not reuse stages computed from the old ones. Hub ids and
    missing paths stay as given (their revision is the user's to pin)."""
    if not isinstance(value, str) or not value or value.startswith("@"):
        return value
    path = Path(value)
    try:
        if path.is_file():
            st = path.stat()
            return {"path": value, "files": [["", st.st_size, st.st_mtime_ns]]}
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())[:2000]
            return {"path": value, "files": [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns]
                                             for p in files]}
    except OSError:
        pass
    return value


def _data_identity(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (_fingerprint(v) if k == "source" else _data_identity(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_data_identity(v) for v in value]
    return value


def cache_keys(graph: StageGraph) -> dict[str, str]:
    """Every stage's content key (16 hex digits), in dependency order."""
    keys: dict[str, str] = {}

    def ref(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("@"):
            return {"stage": keys[value[1:]]}
        return value

    for s in graph.topological_order():
        ident = {"kind": s.kind, "policy": _fingerprint(ref(s.policy)), "teacher": _fingerprint(ref(s.teacher)),
                 "data": {k: _data_identity(ref(v)) for k, v in sorted(s.data.items())}, "params": s.params,
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
