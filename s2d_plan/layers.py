"""The planner's layers: which part of ``s2d_plan`` may import which.

Imports point one way, down the data's journey: a plan is read (``plan``), its outcome
and cost are predicted (``predict``, pure: no file, no database), the home's evidence is
read at one edge (``evidence``: calibration file, probe rows, the posterior cache), the
search allocates (``allocate``), the compiler writes a stage graph (``graph``,
``compiler``, ``rules``), ``planning`` composes those steps once for every caller, the
executor runs graphs (``run``) and records them (``history``). ``adaptive`` plans, runs
and re-plans, so it sits above both; ``api`` and ``cli`` sit on top. The planner and the
runners meet only in ``contract``.

This table is data, read by ``tests/test_layout.py`` (which fails on any import it does
not allow) and by the manual's architecture page, so the rule and its description have
one source.

    >>> "history" in ALLOWED["predict"], "predict" in ALLOWED["evidence"]
    (False, True)
"""

from __future__ import annotations

# the bottom: errors, paths, the runner contract and cluster settings; every part may use them
BASE: frozenset[str] = frozenset({"errors", "paths", "contract", "cluster", "layers"})

_PLANNING = {"contract", "graph", "plan", "predict", "evidence", "allocate", "compiler", "rules"}

# part -> the parts of the planner it may import (besides itself and BASE)
ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "paths": frozenset(),
    "layers": frozenset(),
    "cluster": frozenset(),
    "contract": frozenset({"errors"}),
    "graph": BASE | {"contract"},
    "history": BASE,
    "plan": BASE,
    "predict": BASE | {"plan"},  # pure: computes from values it is given
    "evidence": BASE | {"plan", "predict", "history"},  # the I/O edge of planning
    "allocate": BASE | {"plan", "predict"},
    "compiler": BASE | {"contract", "graph", "plan", "predict", "allocate"},
    "rules": BASE | {"contract", "graph", "plan"},
    "planning": BASE | _PLANNING,
    "run": BASE | {"contract", "graph", "history"},  # the executor never plans
    "adaptive": BASE | _PLANNING | {"planning", "history", "run"},
    "report": BASE | {"contract", "graph", "history", "predict", "evidence"},
    "api": BASE | _PLANNING | {"planning", "history", "run", "report", "adaptive"},
    "cli": BASE | _PLANNING | {"planning", "history", "run", "api", "report", "adaptive"},
}

# one line per part, for the manual's architecture page
ROLES: dict[str, str] = {
    "errors": "the error hierarchy every part raises",
    "paths": "where the home and its files are",
    "layers": "this table",
    "cluster": "cluster settings a plan and a graph share",
    "contract": "what planner and runners share: stage specs, typed params, file names",
    "graph": "the typed stage graph and its JSON",
    "history": "the DuckDB store: writer verbs, read side, snapshots, migrations",
    "plan": "YAML reading, the model registry, the typed plan",
    "predict": "cost model, outcome model and its posterior: pure computation",
    "evidence": "the I/O edge of planning: calibration file, probe evidence, posterior cache",
    "allocate": "search space, Optuna search, allocator, rationale",
    "compiler": "an allocation compiled to a stage graph",
    "rules": "the checks a graph must pass against its plan",
    "planning": "the one planning composition: plan + home -> Recommendation",
    "run": "the executor, launchers (local, ray, slurm), stage identity, recovery",
    "adaptive": "pilots, successive halving, re-planning",
    "report": "the HTML report and its live server",
    "api": "the Python API the CLI wraps",
    "cli": "argument parsing and all printing",
}
