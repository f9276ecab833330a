"""Reading a stage's data: local files, `datasets` saved to disk, hub ids where a network exists.

    >>> detect_format("tiny-models/data/labeled.jsonl"), detect_format("HuggingFaceH4/MATH-500")
    ('jsonl', 'hub')

``load_labeled({"source": "tiny-models/data/labeled.jsonl", "offset": 0, "count": 8})``
gives rows like ``{"problem": "What is 3 + 4?", "answer": "7", "index": 0}``.

Sources: ``.jsonl`` / ``.json``, ``.parquet``, ``.csv``, a directory written by
``Dataset.save_to_disk`` (a ``DatasetDict`` uses its ``train`` split), or a hub id such as
``HuggingFaceH4/MATH-500``, which is only tried where the hub can be reached; otherwise
the error says how to save the data to disk where a network exists. A slice (the
contract's ``LabeledSlice`` / ``PromptSlice`` / ``EvalSlice``) keeps the absolute row
number of each example in ``index`` (the probe's evidence and the GRPO resume checks
refer to it). Relative paths resolve against the current directory.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from s2d_plan.contract import ConfigurationError, EvalSlice, LabeledSlice, PromptSlice, S2DError, StageData
from s2d_plan.contract.files import CALLER_CWD_ENV, caller_path

INSTRUCTION = "Put the final answer in \\boxed{}."  # appended to every problem shown to a model
FORMATS = ("jsonl", "json", "parquet", "csv", "disk", "hub")


class DataError(S2DError):
    """A stage's data cannot be read as the plan describes it."""


def detect_format(source: str) -> str:
    p = Path(source)
    if p.is_dir():
        return "disk"
    for ext, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".parquet", "parquet"),
                     (".csv", "csv")):
        if p.name.endswith(ext):
            return fmt
    if not p.exists() and source.count("/") == 1 and not source.startswith((".", "/")):
        return "hub"
    raise DataError(f"{source}: cannot tell the format (expected .jsonl, .json, .parquet, .csv, a datasets "
                    f"directory or a hub id); set format: in the plan")


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True") or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_rows(source: str, fmt: str | None = None, split: str = "train") -> list[dict[str, Any]]:
    """Every row of a source, as dicts (a relative path from where ``execute`` ran)."""
    source = caller_path(source)
    fmt = fmt or detect_format(source)
    if fmt not in FORMATS:
        raise DataError(f"{source}: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if fmt == "hub":
        return _hub_rows(source, split)
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source}: no such file or directory (relative paths start at {os.environ.get(CALLER_CWD_ENV) or Path.cwd()})")
    try:
        return _READERS[fmt](path, split)
    except DataError:
        raise
    except Exception as exc:  # a corrupt file: name it, do not print a library traceback
        raise DataError(f"{source}: cannot read as {fmt} ({type(exc).__name__}: {exc})") from None


def _jsonl_rows(path: Path, split: str) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n}: not JSON ({exc.msg})") from None
    return rows


def _json_rows(path: Path, split: str) -> list[dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json source holds a list of objects")
    return data


def _parquet_rows(path: Path, split: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _csv_rows(path: Path, split: str) -> list[dict[str, Any]]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _disk_rows(path: Path, split: str) -> list[dict[str, Any]]:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split {split!r} (has {', '.join(ds)})")
        ds = ds[split]
    return ds.to_list()


_READERS = {"jsonl": _jsonl_rows, "json": _json_rows, "parquet": _parquet_rows, "csv": _csv_rows, "disk": _disk_rows}


def _hub_rows(source: str, split: str) -> list[dict[str, Any]]:
    if not _hub_reachable():
        raise DataError(
            f"{source}: looks like a hub dataset id, but the hub cannot be reached from here (no network, or "
            f"HF_HUB_OFFLINE is set). Where a network exists run\n"
            f"    python -c \"import datasets; datasets.load_dataset('{source}', split='{split}')"
            f".save_to_disk('data/{source.replace('/', '__')}')\"\n"
            f"and set source: to that directory.")
    from datasets import load_dataset

    return load_dataset(source, split=split).to_list()


def _field(rows: list[dict], wanted: str | None, fallbacks: tuple[str, ...], source: str, what: str) -> str:
    have = list(rows[0]) if rows else []
    for name in ([wanted] if wanted else list(fallbacks)):
        if name in have:
            return name
    raise DataError(f"{source}: no {what} field {wanted or ' / '.join(fallbacks)!r} (fields: {', '.join(have)}); "
                    f"set {what}_field in the plan")


def _slice(rows: list[dict], offset: int, count: int | None, source: str) -> tuple[int, list[dict]]:
    end = len(rows) if count is None else offset + count
    if end > len(rows):
        raise DataError(f"{source}: slice [{offset}, {end}) is outside its {len(rows)} rows")
    return offset, rows[offset:end]


def load_labeled(part: LabeledSlice | EvalSlice) -> list[dict[str, Any]]:
    """Rows ``{"problem", "answer", "index"}`` of a labeled slice (or the first ``size``
    rows of an eval set)."""
    rows = load_rows(part.source, part.format, part.split or "train")
    pf = _field(rows, part.problem_field, ("problem", "question", "prompt"), part.source, "problem")
    af = _field(rows, part.answer_field, ("answer", "solution", "gold"), part.source, "answer")
    offset, count = (part.offset, part.size) if isinstance(part, EvalSlice) else (part.offset, part.count)
    offset, rows = _slice(rows, offset, count, part.source)
    return [{"problem": str(r[pf]), "answer": str(r[af]), "index": offset + i} for i, r in enumerate(rows)]


def load_prompts(part: PromptSlice) -> list[dict[str, Any]]:
    """Rows ``{"problem", "index"}`` of a prompt slice."""
    rows = load_rows(part.source, part.format, part.split or "train")
    pf = _field(rows, part.prompt_field, ("prompt", "problem", "question"), part.source, "prompt")
    offset, rows = _slice(rows, part.offset, part.count, part.source)
    return [{"problem": r[pf] if isinstance(r[pf], list) else str(r[pf]), "index": offset + i}
            for i, r in enumerate(rows)]


def stage_prompts(data: StageData) -> list[dict[str, Any]]:
    """The prompts a sampling stage reads: ``data.prompts``, else ``data.labeled`` (answers kept)."""
    if data.prompts is not None:
        return load_prompts(data.prompts)
    if data.labeled is not None:
        return load_labeled(data.labeled)
    raise ConfigurationError("stage data needs prompts: {source, ...} or labeled: {source, ...}")


def as_chat(problem: str | list) -> list[dict[str, str]]:
    """The conversation a model is shown for one problem."""
    if isinstance(problem, list):  # already a conversation
        return problem
    return [{"role": "user", "content": f"{problem} {INSTRUCTION}"}]
