"""Stage identity: content keys, runner code versions, resolved inputs.

A stage's key hashes what decides its output: kind, policy/teacher (a model name, or the
key of the ``@stage`` it reads), data (``@stage`` refs by key), params, and the runner's
code version (the source of the kind's runner module and every project module it
imports, transitively: ``code_files``). A local
model or data path counts by its files' sizes and modification times. Resources and
estimates are left out, so moving a stage to more GPUs reuses it. Chaining the keys of
the stages it reads means a changed parameter changes that stage's key and its
dependants' keys, nothing else.

    >>> g = StageGraph.model_validate({"plan": "p", "stages": [
    ...     {"id": "a", "kind": "eval", "policy": "m", "params": {"k": 2}}]})
    >>> len(cache_keys(g)["a"])
    16
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from s2d_plan.contract import Stage, kind_of, stage_ref
from s2d_plan.graph import StageGraph

# Modules under this directory are the project's; anything installed elsewhere (or in a
# site-packages inside it, such as the editable install's .venv) is a dependency.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _module_file(name: str) -> Path | None:
    """The source file of a project module (None: not ours, or a namespace package)."""
    spec = _project_spec(name)
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    return origin if origin is not None and origin.suffix == ".py" else None


@lru_cache(maxsize=None)
def _project_spec(name: str) -> Any:
    """The import spec of a project module, found without running any runner code:
    ``find_spec("a.b")`` imports ``a``, so a name is looked up only under a package
    (``from runners.grpo import use_vllm`` names a function, and looking up
    ``runners.grpo.use_vllm`` would import runners.grpo), and a dependency is recognised by
    its top-level package alone (looking up ``trl.x`` would import trl, and torch)."""
    parent = name.rpartition(".")[0]
    if parent:
        above = _project_spec(parent)
        if above is None or above.submodule_search_locations is None:
            return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    places = ([Path(spec.origin)] if spec.origin and spec.origin not in ("namespace", "built-in") else []) + \
        [Path(p) for p in (spec.submodule_search_locations or [])]
    return spec if places and all(_in_project(p) for p in places) else None


def _in_project(path: Path) -> bool:
    if "site-packages" in path.parts:
        return False
    try:
        path.resolve().relative_to(PROJECT_ROOT)
    except ValueError:
        return False
    return True


def _imported(name: str, path: Path) -> set[str]:
    """Module names ``path`` imports anywhere in its body (lazy imports included), with
    every parent package (importing a.b.c runs a and a.b too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    with_parents = set()
    for mod in found:
        parts = mod.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return with_parents


@lru_cache(maxsize=None)
def code_files(module: str) -> tuple[Path, ...]:
    """The project source files ``python -m module`` runs: the module and every project
    module it imports, transitively (lazy imports included). A model builder that no
    runner imports is not among them, so editing it changes no stage key.

    >>> names = {p.name for p in code_files("runners.opd")}
    >>> "_train.py" in names, "grpo.py" in names, "tiny.py" in names
    (True, False, False)
    """
    seen: dict[str, Path] = {}
    todo = [module] + [module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imported(name, path) - set(seen))
    return tuple(sorted(set(seen.values())))


@lru_cache(maxsize=None)
def runner_version(kind: str) -> str:
    """A hash of the source of every project file the kind's runner module runs."""
    h = hashlib.sha256()
    for path in code_files(kind_of(kind).module):
        h.update(f"{path.relative_to(PROJECT_ROOT).as_posix()}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


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
        target = stage_ref(value)
        return {"stage": keys[target]} if target is not None else _fingerprint(value)

    for s in graph.topological_order():
        data = s.data.model_dump(mode="json", exclude_none=True)
        if s.data.rollouts is not None:
            data["rollouts"] = ref(s.data.rollouts)
        ident = {"kind": s.kind, "policy": ref(s.policy), "teacher": ref(s.teacher), "data": _data_identity(data),
                 "params": s.params.model_dump(mode="json"), "runner": runner_version(s.kind)}
        text = json.dumps(ident, sort_keys=True, default=str)
        keys[s.id] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return keys


def resolve_inputs(stage: Stage, outputs: dict[str, Path]) -> dict[str, str]:
    """The spec's ``inputs``: models and paths pass through, ``@stage`` becomes its output dir."""
    inputs: dict[str, str] = {}
    for name, value in (("policy", stage.policy), ("teacher", stage.teacher), ("data.rollouts", stage.data.rollouts)):
        if value is not None:
            target = stage_ref(value)
            inputs[name] = str(outputs[target]) if target is not None else value
    return inputs
