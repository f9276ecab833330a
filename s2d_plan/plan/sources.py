"""Data sources that are local paths must be data: a regular file within a size cap, or a
directory written by ``datasets``' ``save_to_disk``. A source that names no existing path
(a hub id, or a file built later) is left to the runners, as before.

``/dev/zero``, a FIFO or an arbitrary directory would pass ``validate`` and hang or fill
memory in a runner; here they are a plan problem naming the field.

    >>> source_problems({"data": {"labeled": {"source": "/dev/zero"}}}, Path("."))
    [(('data', 'labeled', 'source'), "'/dev/zero' is not a regular file (a device, FIFO or socket); a data source is a .jsonl/.json/.parquet/.csv file, a datasets save_to_disk directory or a hub id")]
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from s2d_plan.contract import shown_value

MAX_SOURCE_BYTES = 8 * 1024**3  # the runners read a source whole into memory
_SAVED = ("state.json", "dataset_dict.json")  # what save_to_disk writes (a Dataset, a DatasetDict)
_KINDS = "a .jsonl/.json/.parquet/.csv file, a datasets save_to_disk directory or a hub id"


def _sources(raw: dict[str, Any]) -> list[tuple[tuple, Any]]:
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    out = [(("data", part, "source"), data[part].get("source"))
           for part in ("labeled", "prompts") if isinstance(data.get(part), dict)]
    evals = raw.get("eval") if isinstance(raw.get("eval"), list) else []
    out += [(("eval", i, "source"), e.get("source")) for i, e in enumerate(evals) if isinstance(e, dict)]
    return [(path, s) for path, s in out if isinstance(s, str) and s]


def source_problem(source: str, base_dir: Path) -> str | None:
    """Why the local path ``source`` (relative to the plan's folder) is not data, or None."""
    try:
        st = os.stat((base_dir / source).expanduser())
    except (OSError, ValueError):  # no such path (a hub id), or a name the OS refuses
        return None
    shown = shown_value(source)
    if stat.S_ISDIR(st.st_mode):
        if any((base_dir / source).expanduser().joinpath(name).is_file() for name in _SAVED):
            return None
        return f"{shown} is a directory but not one written by datasets' save_to_disk; a data source is {_KINDS}"
    if not stat.S_ISREG(st.st_mode):
        return f"{shown} is not a regular file (a device, FIFO or socket); a data source is {_KINDS}"
    if st.st_size > MAX_SOURCE_BYTES:
        return f"{shown} is {st.st_size / 1024**3:.1f} GiB, over the {MAX_SOURCE_BYTES // 1024**3} GiB a source may be"
    return None


def source_problems(raw: dict[str, Any], base_dir: Path) -> list[tuple[tuple, str]]:
    """(path, message) for every local data source of the plan ``raw`` that is not data."""
    found = [(path, source_problem(s, base_dir)) for path, s in _sources(raw)]
    return [(path, msg) for path, msg in found if msg]
