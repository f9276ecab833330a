"""Printing query results: an aligned text table, CSV, or a JSON array of objects.

    >>> print_rows(["a", "b"], [(1, None), (2.5, "x")], "json")
    [{"a": 1, "b": null}, {"a": 2.5, "b": "x"}]
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import math
import re
import sys
import uuid
from collections.abc import Sequence
from typing import Any

# Control characters (C0 but tab and newline, DEL, C1) and bidi overrides: a value from a
# plan, a graph or the history could otherwise move the cursor, retitle the terminal or
# hide text. Everything the CLI prints from data goes through ``safe_text``.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe_text(text: str) -> str:
    r"""``text`` with control characters written as escapes (newlines and tabs kept).

        >>> print(safe_text("eval\x1b]0;pwned\x07 \u202eok"))
        eval\x1b]0;pwned\x07 \u202eok
    """
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def echo(message: Any = "", err: bool = False) -> None:
    """``typer.echo`` of ``safe_text(message)``: the one way the commands print."""
    import typer

    typer.echo(safe_text(str(message)), err=err)


def _plain(value: Any) -> Any:
    """A JSON-friendly version of a DuckDB value."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(_plain(value))
    return safe_text(str(value).replace("\n", " "))


def format_table(cols: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    cols = [safe_text(str(c)) for c in cols]
    cells = [[_cell(v) for v in row] for row in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in row] for row in cells]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and rows
               for i in range(len(cols))]

    def line(values: Sequence[str]) -> str:
        out = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(out).rstrip()

    lines = [line(list(cols)), line(["-" * w for w in widths])]
    lines += [line(r) for r in cells]
    return "\n".join(lines)


def print_rows(cols: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, out=None) -> None:
    out = out or sys.stdout
    if fmt == "json":
        data = [{c: _plain(v) for c, v in zip(cols, row)} for row in rows]
        out.write(json.dumps(data) + "\n")
    elif fmt == "csv":
        shown = safe_text if out is sys.stdout else str  # a file (--out) keeps the data as it is
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([shown(str(c)) for c in cols])
        for row in rows:
            writer.writerow(["" if v is None else shown(json.dumps(_plain(v)) if isinstance(v, (dict, list))
                                                       else str(_plain(v))) for v in row])
    else:
        if cols:
            out.write(format_table(cols, rows) + "\n")
        out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")


def choose_format(table: bool, csv: bool, json_out: bool, default: str = "table") -> str:
    """The one format the --table/--csv/--json flags ask for (``default`` with none)."""
    from s2d_plan.errors import S2DError

    if sum([table, csv, json_out]) > 1:
        raise S2DError("choose one of --table, --csv, --json")
    return "json" if json_out else "csv" if csv else "table" if table else default


def render_rows(cols: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """The text ``print_rows`` would print, as a string (for ``history --out``)."""
    import io

    buf = io.StringIO()
    print_rows(cols, rows, fmt, buf)
    return buf.getvalue()
