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
from functools import cache
from pathlib import Path
from typing import Any

from s2d_plan.contract import Stage, kind_of, stage_ref
from s2d_plan.graph import StageGraph

# The project's own top-level packages: their modules count as a stage's code wherever they
# are installed (a checkout, an editable install, a wheel in site-packages, `pip --target`);
# every other module is a dependency. A plugin kind's own top-level package counts too.
PROJECT_PACKAGES = ("s2d_plan", "runners", "tinyworld")


def _module_file(name: str, roots: frozenset[str]) -> Path | None:
    """The source file of a project module (None: not ours, or a namespace package)."""
    spec = _project_spec(name, roots)
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    return origin if origin is not None and origin.suffix == ".py" else None


@cache
def _project_spec(name: str, roots: frozenset[str]) -> Any:
    """The import spec of a project module, found without running any runner code:
    ``find_spec("a.b")`` imports ``a``, so a name is looked up only under a package
    (``from runners.grpo import use_vllm`` names a function, and looking up
    ``runners.grpo.use_vllm`` would import runners.grpo), and a dependency is recognised by
    its top-level name alone (looking up ``trl.x`` would import trl, and torch)."""
    if name.partition(".")[0] not in roots:
        return None
    parent = name.rpartition(".")[0]
    if parent:
        above = _project_spec(parent, roots)
        if above is None or above.submodule_search_locations is None:
            return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin == "built-in":
        return None
    return spec if spec.submodule_search_locations is not None or spec.origin else None  # namespace packages too


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


def code_files(module: str) -> tuple[Path, ...]:
    """The project source files ``python -m module`` runs: the module and every project
    module it imports, transitively (lazy imports included). A model builder that no
    runner imports is not among them, so editing it changes no stage key.

    >>> names = {p.name for p in code_files("runners.opd")}
    >>> "_train.py" in names, "grpo.py" in names, "tiny.py" in names
    (True, False, False)
    """
    return tuple(sorted(_code_modules(module).values()))


@cache
def _code_modules(module: str) -> dict[str, Path]:
    """Module name -> source file of every project module ``python -m module`` runs."""
    roots = frozenset(PROJECT_PACKAGES) | {module.partition(".")[0]}
    seen: dict[str, Path] = {}
    todo = [module] + [module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name, roots)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imported(name, path) - set(seen))
    return seen


@cache
def runner_version(kind: str) -> str:
    """A hash of the source of every project module the kind's runner module runs, each
    named by its module name, not its path: the same code installed anywhere (checkout,
    editable, wheel) has the same version, and an edit to any of its files changes it."""
    h = hashlib.sha256()
    modules = _code_modules(kind_of(kind).module)
    if not modules:
        raise RuntimeError(f"stage kind {kind!r}: its runner module {kind_of(kind).module} cannot be found")
    for name, path in sorted(modules.items()):
        h.update(f"{name}\0".encode())
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
