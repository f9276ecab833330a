"""The `s2d-plan` command line: a thin layer over the Python API (``s2d_plan.api``).

Commands parse their arguments, call the API and print what it returns (``render`` for
text, ``output`` for rows); they own every byte on the terminal. A user error
(S2DError) becomes a message on stderr and exit status 2, never a traceback. Modules are
imported inside the commands that need them, so ``--help`` starts fast and the light
install never imports torch, transformers or trl.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import typer

from s2d_plan.cli.output import echo, safe_text
from s2d_plan.errors import S2DError

app = typer.Typer(
    name="s2d-plan",
    help="Plan and run post-training of a small model: where sparse (GRPO) and dense "
    "(distillation) reward go, how much of each, then run it and keep every number in SQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def friendly(fn: Callable) -> Callable:
    """Print a user error as a message (exit 2) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except S2DError as exc:
            echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


PLAN_ARG = typer.Argument(..., help="Plan YAML file.", show_default=False)
HOME_OPT = typer.Option(None, "--home", envvar="S2D_HOME",
                        help="Where the history, stage outputs and calibration live (default ./.s2d).")
# every command that prints rows takes the same three
TABLE_OPT = typer.Option(False, "--table", help="Rows as an aligned table (default on a terminal).")
CSV_OPT = typer.Option(False, "--csv", help="Rows as CSV with a header row.")
JSON_OPT = typer.Option(False, "--json", help="Rows as a JSON array, one object per row.")


def _rows(cols: list[str], rows: list[tuple], table: bool, csv: bool, json_out: bool, default: str = "table") -> None:
    from s2d_plan.cli.output import choose_format, print_rows

    print_rows(cols, rows, choose_format(table, csv, json_out, default))


@app.command()
@friendly
def validate(
    path: Path = typer.Argument(..., help="A plan (.yaml) or a stage graph (.json).", show_default=False),
    plan: Path | None = typer.Option(None, "--plan", help="For a graph: the plan to check its rules against "
                                        "(default: the plan the compiler embedded in the graph)."),
) -> None:
    """Check a plan (print its summary) or a stage graph (types, structure, and every allocation rule)."""
    from s2d_plan.api import validate as check
    from s2d_plan.cli.render import summarize_plan
    from s2d_plan.errors import GraphError

    result = check(path, plan)
    if result.kind == "plan":
        echo(summarize_plan(result.plan))
        return
    if result.problems:
        raise GraphError(f"{path}: the graph breaks {len(result.problems)} rule(s):\n  "
                         + "\n  ".join(str(p) for p in result.problems))
    g = result.graph
    rules = "every allocation rule holds" if result.checked_rules else \
        "rules not checked: the graph carries no plan (pass --plan PLAN.yaml)"
    echo(f"graph {g.plan}: valid, {len(g.stages)} stages ({', '.join(s.kind for s in g.stages)}); {rules}")


@app.command()
@friendly
def recommend(
    plan: Path = PLAN_ARG,
    json_out: bool = typer.Option(False, "--json", help="Print only the compiled stage graph (JSON)."),
    table: bool = typer.Option(False, "--table", help="Print only the alternatives, as a table."),
    csv: bool = typer.Option(False, "--csv", help="Print only the alternatives, as CSV."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the stage graph to this file."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a Pareto plot (accuracy vs GPU-hours) PNG."),
    trials: int | None = typer.Option(None, "--trials", help="Search trials (overrides the plan's search.trials)."),
    home: Path | None = HOME_OPT,
) -> None:
    """Recommend where labels and GPU-hours go; print the pipeline, prediction and rationale."""
    from s2d_plan.api import recommend as plan_it
    from s2d_plan.cli import render

    rec = plan_it(plan, home, trials)
    text = rec.graph.to_json()
    if output is not None:
        output.write_text(text + "\n")
    if plot is not None:
        render.pareto_plot(rec, plot)
    if json_out or table or csv:
        if json_out:
            echo(text)
        else:
            _rows(*render.alternatives(rec), table, csv, False)
        return
    echo(render.recommendation(rec))
    if output is not None:
        echo(f"\nstage graph written to {output} (run it: s2d-plan execute {output})")
    if plot is not None:
        echo(f"Pareto plot written to {plot}")


@app.command()
@friendly
def execute(
    target: Path = typer.Argument(..., help="A stage graph (.json) or a plan (.yaml) to recommend then run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print order, commands and estimates; run nothing."),
    force: list[str] = typer.Option([], "--force", help="Re-run this stage and its dependants (repeatable)."),
    backend: str | None = typer.Option(None, "--backend", help="Where stages run: local, ray or slurm "
                                          "(default: the plan's compute.cluster, else local)."),
    adaptive: bool = typer.Option(False, "--adaptive", help="Pilot the candidates whose ranking is uncertain "
                                  "(the plan's adaptive.pilot_share of its GPU-hours), then run the winner."),
    home: Path | None = HOME_OPT,
) -> None:
    """Run a stage graph (or a plan): resumable, cached by content, logged to DuckDB."""
    from s2d_plan.api import execute as run_graph, load_target
    from s2d_plan.cli import render
    from s2d_plan.paths import resolve_home
    from s2d_plan.run.preview import dry_run as plan_dry_run
    from s2d_plan.run.progress import make_display

    if adaptive:
        _execute_adaptive(target, dry_run, backend, home)
        return
    graph, chosen = load_target(target, home)
    if chosen:
        echo(chosen)
    if dry_run:
        echo(render.dry_run(graph, plan_dry_run(graph, home, force), resolve_home(home)))
        return
    result = run_graph(graph, home, force, display=make_display(f"s2d-plan execute {graph.plan}"), backend=backend)
    for line in result.failures:
        echo(line, err=True)
    raise typer.Exit(result.exit_code)


def _home(home: Path | None) -> Path:
    from s2d_plan.paths import resolve_home

    return resolve_home(home)


def _execute_adaptive(target: Path, dry_run: bool, backend: str | None, home: Path | None) -> None:
    from s2d_plan.api import execute_adaptive
    from s2d_plan.errors import ConfigurationError
    from s2d_plan.run.progress import make_display

    if target.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigurationError(f"--adaptive plans its pilots from a plan: give the plan's YAML, not {target.name}")
    if dry_run or backend:
        raise ConfigurationError("--adaptive runs pilots, then decides: it has no --dry-run, and its stages run "
                                 "where the plan's compute.cluster says (no --backend)")
    result = execute_adaptive(target, home, display=make_display(f"s2d-plan execute --adaptive {target.name}"),
                              say=typer.echo)
    echo(f"session {result.session}: {result.status} (final run {result.run_id}; "
               f"`s2d-plan show {result.run_id}` shows the decision trail)")
    raise typer.Exit(result.exit_code)


@app.command()
@friendly
def history(
    sql: str | None = typer.Argument(None, help='SQL to run against the history ("-" reads it from stdin).'),
    table: bool = TABLE_OPT,
    csv: bool = CSV_OPT,
    json_out: bool = JSON_OPT,
    out: Path | None = typer.Option(None, "--out", help="Write the rows to this file (CSV, or JSON with "
                                       "--json), atomically; never one of the history's own files."),
    check: bool = typer.Option(False, "--check", help="Verify the history's invariants (metric rows vs "
                               "files, offsets, stale RUNNING, temp files) and repair what can be "
                               "repaired without loss."),
    max_rows: int = typer.Option(10_000, "--max-rows", min=0, help="Show (or write) at most this many rows; "
                                 "0 = no cap."),
    home: Path | None = HOME_OPT,
) -> None:
    """Query past runs with SQL (read-only): runs, stages, metrics, artifacts, evidence, trials."""
    from s2d_plan.api import check_history, export_query, query

    if check:
        report = check_history(home)
        for line in report.lines:
            echo(line)
        raise typer.Exit(0 if report.ok else 1)
    if sql is None:
        raise typer.BadParameter("give SQL to run (or --check)")
    if sql == "-":
        sql = sys.stdin.read()
    cols, rows = query(sql, home, max_rows=max_rows)
    cut = bool(max_rows) and len(rows) > max_rows
    rows = rows[:max_rows] if cut else rows
    if out is not None:
        from s2d_plan.cli.output import render_rows

        written = export_query(render_rows(cols, rows, "json" if json_out else "csv"), out, home)
        echo(f"{len(rows)} row{'' if len(rows) == 1 else 's'} written to {written}", err=True)
    else:
        _rows(cols, rows, table, csv, json_out, default="table" if sys.stdout.isatty() else "csv")
    if cut:
        echo(f"note: {max_rows} rows shown; more were cut (--max-rows N to raise, 0 = no cap)", err=True)


@app.command()
@friendly
def runs(
    table: bool = TABLE_OPT,
    csv: bool = CSV_OPT,
    json_out: bool = JSON_OPT,
    home: Path | None = HOME_OPT,
) -> None:
    """List past runs, newest first."""
    from s2d_plan.history.read import list_runs

    cols, rows = list_runs(home)
    if not rows and not (csv or json_out):
        echo("no runs yet")
        return
    _rows(cols, rows, table, csv, json_out)


@app.command()
@friendly
def show(
    run: str = typer.Argument(..., help="Run id (a unique prefix is enough)."),
    table: bool = TABLE_OPT,
    csv: bool = CSV_OPT,
    json_out: bool = JSON_OPT,
    home: Path | None = HOME_OPT,
) -> None:
    """Show one run: stages, statuses, estimated vs actual GPU-hours, final metrics, and
    for a run of an adaptive session (or a session id), the session's decision trail."""
    from s2d_plan.cli import render
    from s2d_plan.history.decisions import session_of_run, trail
    from s2d_plan.history.read import show_run

    if run.startswith("ad-"):
        echo(render.decisions(run, trail(_home(home), run)))
        return
    view = show_run(run, home)
    if csv or json_out:  # rows only, for scripts
        _rows(view.columns, view.stages, table, csv, json_out)
        return
    took = f"  took {(view.end - view.start).total_seconds():.1f}s" if view.end else ""
    echo(f"run {view.run_id}  plan {view.plan}  {view.status}  started {view.start:%Y-%m-%d %H:%M:%S}{took}")
    _rows(view.columns, view.stages, True, False, False)
    for stage_id, status, text in view.errors:
        echo(f"\n{stage_id} {status}: {text.rstrip()}")
    if view.error:
        echo(f"\nrun: {view.error}")
    session = session_of_run(_home(home), view.run_id)
    if session:
        echo("\n" + render.decisions(session, trail(_home(home), session)))


@app.command()
@friendly
def probe(
    plan: Path = PLAN_ARG,
    home: Path | None = HOME_OPT,
) -> None:
    """Measure per-prompt solve rates of the plan's models on its labeled data (evidence for recommend)."""
    from s2d_plan.api import probe as measure
    from s2d_plan.run.progress import make_display

    result, rows = measure(plan, home, display=make_display(f"s2d-plan probe {plan}"))
    for line in result.failures:
        echo(line, err=True)
    for model, source, prompts, rate in rows:
        echo(f"evidence: {model} on {source}: {prompts} prompts, solve rate {rate:.1%}")
    raise typer.Exit(result.exit_code)


@app.command()
@friendly
def calibrate(
    home: Path | None = HOME_OPT,
) -> None:
    """Fit the outcome and cost models' constants to the runs in the history."""
    from s2d_plan.api import calibrate as fit
    from s2d_plan.cli.render import calibration_report

    echo(calibration_report(fit(home, progress=_fit_progress("calibrate: sampling the outcome posterior"))))


def _fit_progress(what: str) -> Callable[[int, int], None] | None:
    """A progress line with an ETA, redrawn in place on a terminal (stderr); nothing when piped."""
    if not sys.stderr.isatty():
        return None
    started = time.monotonic()

    def show(step: int, steps: int) -> None:
        eta = (time.monotonic() - started) / step * (steps - step)
        sys.stderr.write(f"\r{what}: step {step}/{steps}, ETA {eta:3.0f} s" + ("\n" if step == steps else ""))
        sys.stderr.flush()

    return show


@app.command()
@friendly
def report(
    runs: list[str] = typer.Argument(None, help="Run ids (unique prefixes); default: the newest run.",
                                     show_default=False),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="The HTML file to write."),
    png: Path | None = typer.Option(None, "--png", help="Also write every chart as a PNG into this folder."),
    serve: bool = typer.Option(False, "--serve", help="Serve the page live (refreshing) instead of writing it."),
    port: int = typer.Option(8765, "--port", help="Port for --serve."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address for --serve (default: this machine only)."),
    refresh: float = typer.Option(5.0, "--refresh", help="Seconds between refreshes of the served page."),
    home: Path | None = HOME_OPT,
) -> None:
    """Draw runs from the history as one self-contained HTML page (plan vs outcome, curves, alternatives)."""
    if serve:
        from s2d_plan.report.serve import make_server

        server = make_server(runs or [], home, host, port, refresh)
        shown = ", ".join(runs) if runs else "the newest run"
        echo(f"serving the report of {shown} at http://{host}:{server.server_address[1]}/ "
                   f"(bound to {host}{' only' if host == '127.0.0.1' else ''}; refreshes every {refresh:g}s; "
                   "Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return
    from s2d_plan.api import report as write

    path, pngs = write(runs or [], home, output, png)
    echo(f"report written to {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained; open it in a browser)")
    if pngs:
        echo(f"{len(pngs)} PNG(s) written to {png}/")


@app.command("reward-check")
@friendly
def reward_check(
    gold: str | None = typer.Option(None, "--gold", help="The gold answer."),
    answer: str | None = typer.Option(None, "--answer", help="A model's completion or answer."),
    file: Path | None = typer.Option(None, "--file", help='JSONL of {"gold": ..., "answer": ...} pairs.'),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per pair."),
) -> None:
    """Show what the verifier extracts from a gold answer and a completion, and the score."""
    from s2d_plan.run.procs import safe_env

    argv = [sys.executable, "-P", "-m", "runners.reward_check"]  # nothing imported from the cwd
    for flag, value in (("--gold", gold), ("--answer", answer), ("--file", file)):
        if value is not None:
            argv += [flag, str(value)]
    # the verifier lives with the runners (math-verify, the train extra): its own process
    raise typer.Exit(subprocess.call(argv + (["--json"] if json_out else []), env=safe_env()))


@app.command()
@friendly
def init(
    student: str = typer.Option(..., "--student", help="The model you will deploy (a registry name)."),
    teacher: str = typer.Option(..., "--teacher", help="A candidate teacher (a registry name)."),
    out: Path = typer.Option(Path("plan.yaml"), "-o", "--out", help="Where to write the plan."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a commented starting plan for a student and a teacher (then edit it and `validate` it)."""
    from s2d_plan.errors import ConfigurationError
    from s2d_plan.plan.template import plan_text

    if out.exists() and not force:
        raise ConfigurationError(f"{out} exists; pass --force to overwrite it")
    out.write_text(plan_text(student, teacher, str(out)), encoding="utf-8")
    echo(f"plan written to {out}; next: s2d-plan validate {out}")


def _version(value: bool) -> None:
    if value:
        from s2d_plan import __version__

        echo(f"s2d-plan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Plan and run post-training of a small model."""


def _show_notice(message, category, filename, lineno, file=None, line=None) -> None:
    """History notices (a stale snapshot, a missing main file) as one `warning:` line."""
    print(safe_text(f"warning: {message}"), file=sys.stderr)


def main() -> None:
    import warnings

    warnings.showwarning = _show_notice
    app()


if __name__ == "__main__":
    main()
