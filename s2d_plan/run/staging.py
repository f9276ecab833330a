"""Stage directories between attempts: the work directory made ready, a forced stage's
old output kept aside until the new one completes, and artifact hashes.

A stage's output ``<home>/stages/<id>-<key>/`` counts as done only with its COMPLETE
marker; its runner works in ``<output>.partial`` (the same path on every attempt)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from s2d_plan.contract import is_complete
from s2d_plan.history.store import utcnow


def prepare_dirs(output: Path, work: Path, clean: bool, aside: Path | None = None) -> Path | None:
    """Make ``work`` ready for a new attempt; never start on a COMPLETE-less output.

    A complete output being re-run (``--force``) is moved to ``aside`` rather than
    deleted, so that ``settle_aside`` can put it back if the new attempt does not finish.
    Returns where the old output went, or None."""
    moved = None
    if aside is not None and is_complete(output):
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(output, aside)
        moved = aside
    if clean:
        shutil.rmtree(output, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    elif output.exists() and not is_complete(output):
        # renamed into place but never marked: give it back to the runner to finish
        if work.exists():
            shutil.rmtree(output)
        else:
            os.replace(output, work)
    return moved


def settle_aside(output: Path, aside: Path | None) -> bool:
    """After a forced attempt: drop the old output if the new one completed, else put
    the old one back. Returns True when the old output was restored."""
    if aside is None or not aside.exists():
        return False
    if is_complete(output):
        shutil.rmtree(aside, ignore_errors=True)
        return False
    shutil.rmtree(output, ignore_errors=True)
    os.replace(aside, output)
    return True


def reclaim_aside(output: Path) -> bool:
    """A forced attempt whose executor died leaves the old output set aside; when the
    output itself is not complete, put the newest complete one back (same key: same
    content). Returns whether ``output`` is complete afterwards."""
    if is_complete(output):
        return True
    asides = sorted(output.parent.glob(f"{output.name}.replaced-*"))
    for aside in reversed(asides):
        if is_complete(aside):
            shutil.rmtree(output, ignore_errors=True)
            os.replace(aside, output)
            break
    for stale in output.parent.glob(f"{output.name}.replaced-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return is_complete(output)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def artifact_row(run_id: str, stage_id: str, name: str, path: Path, attempt: int, key: str) -> tuple | None:
    """(run_id, stage_id, name, uri, sha256, bytes, ...) for a file or a directory (whose
    hash covers each file's relative path and hash, in sorted order)."""
    if path.is_file():
        digest, size = _file_sha256(path), path.stat().st_size
    elif path.is_dir():
        h, size = hashlib.sha256(), 0
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{_file_sha256(f)}\n".encode())
            size += f.stat().st_size
        digest = h.hexdigest()
    else:
        return (run_id, stage_id, name, path.as_uri(), None, None, attempt, key, utcnow())
    return (run_id, stage_id, name, path.as_uri(), digest, size, attempt, key, utcnow())
