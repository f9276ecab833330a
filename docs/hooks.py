"""MkDocs hook: the pages generated from the code and the results, at build time.

Nothing here is written into the checkout: every page is a ``File.generated`` handed to
MkDocs in ``on_files``. The generators are plain functions so ``tests/test_docs.py`` can
check them without a build:

- ``plan_reference()``: every field of ``PlanSpec``, recursively (``plan_fields()`` lists
  their paths), from the pydantic models' field descriptions;
- ``cli_reference()``: every command of the Typer app, from click's view of it;
- ``architecture()``: the ``ALLOWED`` and ``ROLES`` tables of ``s2d_plan/layers.py``, the
  table ``tests/test_layout.py`` enforces;
- ``results_files()``: ``benchmarks/results/*.md`` (and the plots they sit beside), as
  written by the benchmarks, never re-typed.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `mkdocs build` from the checkout without an install
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


# ---------------------------------------------------------------- the plan reference


def _models_in(annotation: object) -> list[type]:
    """The pydantic models an annotation holds (``X``, ``X | None``, ``list[X]``, ...)."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _type_name(annotation: object) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    text = repr(annotation).replace("typing.", "")
    for mod in ("s2d_plan.plan.spec.", "s2d_plan.cluster.", "pathlib."):
        text = text.replace(mod, "")
    return text


def _default(field) -> str:  # noqa: ANN001 - pydantic FieldInfo
    from pydantic import BaseModel

    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(the defaults below)"
    return f"`{value!r}`"


def _walk(model: type, prefix: str = "", seen: tuple[type, ...] = ()):
    """Yield (path, type, default, description) for every field, depth first."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        yield path, _type_name(annotation), _default(field), (field.description or "").strip()
        for sub in _models_in(annotation):
            if sub in seen or sub is model:
                continue
            many = typing.get_origin(annotation) is list or any(
                typing.get_origin(a) is list for a in typing.get_args(annotation)
            )
            yield from _walk(sub, f"{path}[]." if many else f"{path}.", seen + (model,))


def plan_fields() -> list[str]:
    """Every field path the plan reference documents."""
    from s2d_plan.plan.spec import PlanSpec

    return [path for path, *_ in _walk(PlanSpec)]


def plan_reference() -> str:
    from s2d_plan.plan.spec import PlanSpec

    lines = [
        "# Plan reference",
        "",
        "Every key a plan YAML may hold, generated at build time from the pydantic models in",
        "`s2d_plan/plan/spec.py` (their field descriptions). `a[].b` is key `b` of each item of",
        "the list `a`. Unknown keys are errors (with a did-you-mean); see [Plans](plans.md) for",
        "the example plans and `s2d-plan validate PLAN` to check one.",
        "",
        "| field | type | default | description |",
        "|---|---|---|---|",
    ]
    for path, type_name, default, description in _walk(PlanSpec):
        cell = description.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{path}` | `{type_name.replace('|', chr(92) + '|')}` | {default} | {cell} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the CLI reference


def cli_commands() -> dict[str, object]:
    """Every command and subcommand of the CLI, by its full name (``"s2d-plan recommend"``)."""
    import typer

    from s2d_plan.cli import app

    root = typer.main.get_command(app)
    found: dict[str, object] = {}

    # typer ships its own copy of click (typer._click), so groups are found by duck typing
    def walk(cmd, name: str) -> None:  # noqa: ANN001 - a click command
        found[name] = cmd
        if hasattr(cmd, "commands"):
            for sub_name, sub in sorted(cmd.commands.items()):
                walk(sub, f"{name} {sub_name}")

    walk(root, "s2d-plan")
    return found


def _help(cmd) -> str:  # noqa: ANN001 - click.Command
    return (cmd.help or cmd.short_help or "").strip()


def cli_reference() -> str:
    lines = [
        "# CLI reference",
        "",
        "Generated at build time from the Typer app (`s2d_plan/cli/`), as click sees it: every",
        "command, its arguments and options. The [guides](index.md) show what each verb prints.",
        "",
    ]
    for name, cmd in cli_commands().items():
        ctx = cmd.context_class(cmd, info_name=name)
        lines += [f"## `{name}`", "", _help(cmd), "", "```", name + " " + " ".join(cmd.collect_usage_pieces(ctx)), "```", ""]
        params = [p for p in cmd.params if not getattr(p, "hidden", False)]
        if params:
            lines += ["| argument / option | type | default | help |", "|---|---|---|---|"]
            for p in params:
                names = ", ".join(p.opts + list(getattr(p, "secondary_opts", [])))
                kind = "argument" if p.param_type_name == "argument" else ("flag" if getattr(p, "is_flag", False) else "value")
                default = p.default
                if isinstance(default, Path):
                    default = str(default)
                shown = "" if default is None or callable(default) or default == () else f"`{default!r}`"
                if p.required:
                    shown = "required"
                text = (getattr(p, "help", None) or "").replace("|", "\\|").replace("\n", " ")
                lines.append(f"| `{names}` | {kind} | {shown} | {text} |")
            lines.append("")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the architecture page


def architecture() -> str:
    from s2d_plan import layers

    lines = [
        "# Architecture",
        "",
        "The planner (`s2d_plan`) is cut into parts that follow the data's journey: a plan is",
        "read, its outcome and cost predicted, the home's evidence read at one edge, the search",
        "allocates, the compiler writes a stage graph, the executor runs it and the history",
        "records it. Imports point one way, down that journey. The table below is generated",
        "from `s2d_plan/layers.py` (`ALLOWED` and `ROLES`), the same data `tests/test_layout.py`",
        "reads when it fails on any import it does not allow; so the rule and this page cannot",
        "disagree.",
        "",
        f"Every part may also import the base: {', '.join(f'`{b}`' for b in sorted(layers.BASE))}.",
        "The runners (`runners/`) meet the planner only in `contract`.",
        "",
        "| part | role | may import (besides itself and the base) |",
        "|---|---|---|",
    ]
    for part, allowed in layers.ALLOWED.items():
        extra = sorted(set(allowed) - set(layers.BASE))
        shown = ", ".join(f"`{a}`" for a in extra) or "nothing"
        lines.append(f"| `{part}` | {layers.ROLES.get(part, '')} | {shown} |")
    lines += ["", "See [Layout](layout.md) for what lives in each folder.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- the results pages


def results_files() -> dict[str, str | bytes]:
    """``results/<name>`` -> content: each results file as the benchmarks wrote it."""
    out: dict[str, str | bytes] = {}
    names = sorted(RESULTS.glob("*.md"))
    index = [
        "# Results",
        "",
        "Each page is a file of `benchmarks/results/` as the benchmark wrote it, included at",
        "build time (nothing re-typed). The commands that produce them are in",
        "[Benchmarks](../benchmarks.md), [tinyworld](../tinyworld.md) and",
        "[the grid of worlds](../worlds.md).",
        "",
    ]
    for md in names:
        text = md.read_text(encoding="utf-8")
        png = md.with_suffix(".png")
        if png.exists():
            out[f"results/{png.name}"] = png.read_bytes()
            text += f"\n\n![{md.stem}]({png.name})\n"
        text += f"\n\n*Source: `benchmarks/results/{md.name}` (and `{md.stem}.json` beside it).*\n"
        out[f"results/{md.name}"] = text
        index.append(f"- [{md.stem}]({md.name})")
    out["results/index.md"] = "\n".join(index) + "\n"
    return out


def generated_pages() -> dict[str, str | bytes]:
    pages: dict[str, str | bytes] = {
        "plan-reference.md": plan_reference(),
        "cli-reference.md": cli_reference(),
        "architecture.md": architecture(),
        "changelog.md": (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"),
    }
    pages.update(results_files())
    return pages


def on_files(files, config):  # noqa: ANN001, ANN201 - MkDocs' hook signature
    from mkdocs.structure.files import File

    for uri, content in generated_pages().items():
        files.append(File.generated(config, uri, content=content))
    return files

