"""The Python API: everything the command line does, callable from a notebook.

The CLI (``s2d_plan.cli``) only parses arguments and prints what these return. Each
function follows the data: ``recommend`` reads a plan, the evidence and calibration of a
home and returns the allocation with its compiled graph; ``execute`` runs a graph (a
plan is recommended first) and returns what happened; ``query`` answers SQL over the
history.

    >>> import tempfile
    >>> home = tempfile.mkdtemp()
    >>> rec = recommend("plans/budget.yaml", home=home)
    >>> rec.graph.stages[-1].kind, rec.graph.predicted.eval
    ('eval', 'math500')
    >>> run = execute(StageGraph(plan="empty", stages=()), home=home)
    >>> run.status, query("SELECT plan, status FROM runs", home)[1]
    ('FINISHED', [('empty', 'FINISHED')])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2d_plan import planning
from s2d_plan.errors import HistoryError
from s2d_plan.graph import StageGraph, load_graph
from s2d_plan.history.read import query, write_export
from s2d_plan.paths import resolve_home
from s2d_plan.plan.spec import PlanSpec, load_plan
from s2d_plan.planning import Recommendation

if TYPE_CHECKING:  # the executor, launchers, adaptive and doctor load only when a verb needs them
    from s2d_plan.adaptive.session import AdaptiveResult
    from s2d_plan.history.doctor import CheckReport
    from s2d_plan.rules import RuleProblem
    from s2d_plan.run.executor import RunResult

__all__ = ["AdaptiveResult", "Recommendation", "calibrate", "check_history", "execute", "execute_adaptive",
           "export_query", "graph_for_plan", "probe",
           "query", "recommend", "report", "validate"]


def recommend(plan: str | Path | PlanSpec, home: str | Path | None = None, trials: int | None = None) -> Recommendation:
    """Search the plan with the probe evidence and calibration of ``home``
    (``--home`` / ``S2D_HOME`` / ``./.s2d``) and compile the best allocation."""
    return planning.recommend(_spec(plan), home, trials)


def graph_for_plan(plan: str | Path | PlanSpec, home: str | Path | None = None) -> tuple[StageGraph, str]:
    """The graph ``execute PLAN`` runs (the plan's unfinished run resumed, else the
    recommendation), and what was chosen, in one line."""
    return planning.graph_for_plan(_spec(plan), home)


def _spec(plan: str | Path | PlanSpec) -> PlanSpec:
    return plan if isinstance(plan, PlanSpec) else load_plan(plan)


def execute(target: StageGraph | str | Path, home: str | Path | None = None, force: Iterable[str] = (),
            display: Any = None, backend: str | None = None) -> RunResult:
    """Run a graph (a ``StageGraph``, a graph JSON file, or a plan YAML, which is
    recommended first or resumed); returns what happened, never raising for a failed stage.
    ``backend`` (local, ray, slurm) overrides where the graph says its stages run.
    Pilots first, then the winner: ``execute_adaptive``."""
    from s2d_plan.run.executor import execute_graph
    from s2d_plan.run.launchers import cluster_for

    graph = target if isinstance(target, StageGraph) else load_target(target, home)[0]
    return execute_graph(graph, home, force, display=display, cluster=cluster_for(backend, graph.cluster))


def execute_adaptive(plan: str | Path, home: str | Path | None = None, display: Any = None,
                     say: Callable[[str], None] = print) -> AdaptiveResult:
    """``execute PLAN --adaptive``: pilot the candidates whose ranking is uncertain, then
    run the winner (``s2d_plan.adaptive.session``)."""
    from s2d_plan.adaptive.session import execute_adaptive as run_session
    from s2d_plan.errors import GraphError

    if isinstance(plan, StageGraph) or Path(plan).suffix.lower() not in (".yaml", ".yml"):
        raise GraphError("adaptive execution starts from a plan (.yaml), not a stage graph")
    return run_session(plan, home, display=display, say=say)


def calibrate(home: str | Path | None = None, min_runs: int | None = None,
              progress: Callable[[int, int], None] | None = None,
              sources: Iterable[str | Path] | None = None) -> dict[str, Any]:
    """Fit the home's finished runs into ``<home>/calibration.json`` and return what was
    written (``s2d_plan.evidence.from_runs.calibrate``, loaded only for this verb)."""
    from s2d_plan.evidence import from_runs

    kwargs: dict[str, Any] = {"progress": progress, "sources": list(sources) if sources is not None else None}
    if min_runs is not None:
        kwargs["min_runs"] = min_runs
    return from_runs.calibrate(home, **kwargs)


def load_target(target: str | Path, home: str | Path | None = None) -> tuple[StageGraph, str | None]:
    """A graph file as it is, or a plan's graph and the line saying what was chosen."""
    target = Path(target)
    if target.suffix.lower() in (".yaml", ".yml"):
        return graph_for_plan(target, home)
    return load_graph(target), None


def probe(plan: str | Path, home: str | Path | None = None, display: Any = None) -> tuple[RunResult, list[tuple]]:
    """Run one probe stage per model of the plan; returns the run and, per (model,
    source), the prompts probed and the mean solve rate. The next ``recommend`` uses them."""
    from s2d_plan.compiler import compile_probe_graph
    from s2d_plan.run.executor import execute_graph

    result = execute_graph(compile_probe_graph(load_plan(plan)), home, display=display)
    rows: list[tuple] = []
    if result.exit_code == 0:
        _, rows = query("""SELECT model, source, count(*), sum(correct) / sum(samples)
                           FROM evidence WHERE run_id = ? GROUP BY ALL ORDER BY model""", home, [result.run_id])
    return result, rows


@dataclass(frozen=True)
class Validation:
    kind: str  # "plan" or "graph"
    plan: PlanSpec | None
    graph: StageGraph | None
    problems: list[RuleProblem]  # rules a graph breaks (plans: none; their errors raise)
    checked_rules: bool  # False: a graph without its plan, only its structure and types were checked


def validate(path: str | Path, plan: str | Path | None = None) -> Validation:
    """Check a plan (raises PlanError listing every problem) or a stage graph (raises
    GraphError for structure and typed params; returns the rules it breaks, checked
    against ``plan`` or the plan the compiler embedded in the graph)."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return Validation("plan", load_plan(path), None, [], False)
    from s2d_plan.rules import rule_problems

    graph = load_graph(path)
    spec = load_plan(plan) if plan is not None else _embedded_plan(graph)
    problems = rule_problems(spec, graph) if spec is not None else []
    return Validation("graph", spec, graph, problems, spec is not None)


def _embedded_plan(graph: StageGraph) -> PlanSpec | None:
    embedded = graph.meta.get("plan_spec")
    if not isinstance(embedded, dict):
        return None
    try:
        spec = PlanSpec.model_validate(embedded.get("spec"))
    except ValueError:
        return None
    spec._base_dir = Path(embedded.get("base_dir") or ".")
    return spec


def export_query(text: str, out: str | Path, home: str | Path | None = None) -> Path:
    """Write rendered query rows to ``out`` atomically (``history --out``); never over
    the history's own files."""
    return write_export(out, text, home)


def check_history(home: str | Path | None = None, repair: bool = True) -> CheckReport:
    """Verify the history's invariants and repair what can be repaired without loss:
    a deleted main file restored from its snapshot, leftover temporary files removed,
    stages left RUNNING by a dead executor closed (their metrics ingested), and every
    ended attempt's metric rows equal to the lines of its metrics file.

        report = check_history(".s2d")
        print("\\n".join(report.lines))
    """
    from s2d_plan.history.doctor import CheckReport, check_metrics
    from s2d_plan.history.files import leftover_temp_files
    from s2d_plan.history.store import HistoryWriter
    from s2d_plan.run.recovery import recover_stale

    home = resolve_home(home)
    report = CheckReport()
    if not (home / "history.duckdb").exists() and not (home / "history.snapshot.duckdb").exists():
        raise HistoryError(f"no history at {home / 'history.duckdb'} (nothing to check)")
    db = HistoryWriter(home, lock_timeout_s=5.0)  # restores, cleans temp files, or names who holds it
    try:
        recovered = recover_stale(db, home, "history --check")
        report.lines += recovered
        report.problems += len(recovered)
        check_metrics(db, report, repair)
    finally:
        db.close()
    left = leftover_temp_files(home)
    if left:
        report.unrepaired += len(left)
        report.lines.append("problem: temporary files left: " + ", ".join(p.name for p in left))
    report.lines.append("history OK" if report.ok else f"{report.unrepaired} problem(s) not repaired")
    return report


def report(runs: Iterable[str] = (), home: str | Path | None = None, output: str | Path = "report.html",
           png_dir: str | Path | None = None) -> tuple[Path, list[Path]]:
    """Write the HTML report of ``runs`` (unique run-id prefixes; the newest run when
    none) to ``output``, and a PNG per chart to ``png_dir`` if given; returns the paths.

        path, _ = report([], home, "report.html")   # the newest run
    """
    from s2d_plan.report import make_report, page_title, render_html

    rep = make_report(list(runs), home)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render_html(rep, page_title(rep)))
    tmp.replace(out)
    pngs: list[Path] = []
    if png_dir is not None:
        from s2d_plan.report.images import export_pngs

        pngs = export_pngs(rep, png_dir)
    return out, pngs
