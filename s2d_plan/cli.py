"""The `s2d-plan` command line: a thin layer over the Python API.

Every command turns a user error (S2DError) into a message on stderr and exit status 2;
no traceback reaches the user for bad input. Heavy modules (torch, transformers, trl,
math-verify) are imported inside the commands that need them, never at start-up.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

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
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


PLAN_ARG = typer.Argument(..., help="Plan YAML file.", show_default=False)
HOME_OPT = typer.Option(None, "--home", envvar="S2D_HOME",
                        help="Where the history, stage outputs and calibration live (default ./.s2d).")


@app.command()
@friendly
def validate(plan: Path = PLAN_ARG) -> None:
    """Check a plan file and print a one-screen summary (exit 2 with every problem listed)."""
    from s2d_plan.spec import load_plan, summarize_plan

    spec = load_plan(plan)
    typer.echo(summarize_plan(spec))


@app.command()
@friendly
def recommend(
    plan: Path = PLAN_ARG,
    json_out: bool = typer.Option(False, "--json", help="Print only the compiled stage graph (JSON)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the stage graph to this file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a Pareto plot (accuracy vs GPU-hours) PNG."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Search trials (overrides the plan's search.trials)."),
    home: Optional[Path] = HOME_OPT,
) -> None:
    """Recommend where labels and GPU-hours go; print the pipeline, prediction and rationale."""
    from s2d_plan.recommend import run_recommend

    run_recommend(plan, json_out=json_out, output=output, plot=plot, trials=trials, home=home)


@app.command()
@friendly
def execute(
    target: Path = typer.Argument(..., help="A stage graph (.json) or a plan (.yaml) to recommend then run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print order, commands and estimates; run nothing."),
    force: list[str] = typer.Option([], "--force", help="Re-run this stage and its dependants (repeatable)."),
    home: Optional[Path] = HOME_OPT,
) -> None:
    """Run a stage graph (or a plan): resumable, cached by content, logged to DuckDB."""
    from s2d_plan.executor import run_execute

    code = run_execute(target, dry_run=dry_run, force=force, home=home)
    raise typer.Exit(code)


@app.command()
@friendly
def history(
    sql: str = typer.Argument(..., help='SQL to run against the history ("-" reads it from stdin).'),
    table: bool = typer.Option(False, "--table", help="Aligned table (default on a terminal)."),
    csv: bool = typer.Option(False, "--csv", help="CSV with a header row."),
    json_out: bool = typer.Option(False, "--json", help="A JSON array, one object per row."),
    home: Optional[Path] = HOME_OPT,
) -> None:
    """Query past runs with SQL (read-only): runs, stages, metrics, artifacts, evidence, trials."""
    from s2d_plan.history import run_history_query

    if sql == "-":
        sql = sys.stdin.read()
    run_history_query(sql, table=table, csv=csv, json_out=json_out, home=home)


@app.command()
@friendly
def runs(
    home: Optional[Path] = HOME_OPT,
) -> None:
    """List past runs, newest first."""
    from s2d_plan.history import run_list_runs

    run_list_runs(home=home)


@app.command()
@friendly
def show(
    run: str = typer.Argument(..., help="Run id (a unique prefix is enough)."),
    home: Optional[Path] = HOME_OPT,
) -> None:
    """Show one run: stages, statuses, estimated vs actual GPU-hours, final metrics."""
    from s2d_plan.history import run_show

    run_show(run, home=home)


@app.command()
@friendly
def probe(
    plan: Path = PLAN_ARG,
    home: Optional[Path] = HOME_OPT,
) -> None:
    """Measure per-prompt solve rates of the plan's models on its labeled data (evidence for recommend)."""
    from s2d_plan.executor import run_probe

    raise typer.Exit(run_probe(plan, home=home))


@app.command()
@friendly
def calibrate(
    home: Optional[Path] = HOME_OPT,
) -> None:
    """Fit the outcome and cost models' constants to the runs in the history."""
    from s2d_plan.calibrate import run_calibrate

    run_calibrate(home)


@app.command("reward-check")
@friendly
def reward_check(
    gold: Optional[str] = typer.Option(None, "--gold", help="The gold answer."),
    answer: Optional[str] = typer.Option(None, "--answer", help="A model's completion or answer."),
    file: Optional[Path] = typer.Option(None, "--file", help='JSONL of {"gold": ..., "answer": ...} pairs.'),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per pair."),
) -> None:
    """Show what the verifier extracts from a gold answer and a completion, and the score."""
    from s2d_plan.rewardcheck import run_reward_check

    raise typer.Exit(run_reward_check(gold=gold, answer=answer, file=file, json_out=json_out))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
