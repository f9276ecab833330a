"""Runner processes: start (argv, own session, dies with the executor), stop, tail.

A runner runs in its own session (process group) so that a Ctrl-C at the terminal
reaches only the executor, which then stops each stage deliberately. On Linux the child
also asks the kernel for SIGTERM when the executor dies (``PR_SET_PDEATHSIG``), so a
kill -9 of the executor leaves no orphan writing into a stage directory; on restart the
executor still kills any survivor's process group (other platforms, grandchildren).
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from s2d_plan.contract.files import CALLER_CWD_ENV

_PR_SET_PDEATHSIG = 1
# Metrics shown as "the" progress figure of a stage when a runner logs them.
KEY_METRICS = ("reward", "accuracy", "loss", "kl")


def _load_prctl():
    # resolved here, in the parent: the child between fork and exec must not dlopen
    # (another thread of the executor may hold the loader's lock at fork time)
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl() if sys.platform.startswith("linux") else None


def _die_with_parent(parent: int) -> None:  # runs in the child between fork and exec
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the executor died before the request took effect
        os._exit(1)


def project_root() -> Path | None:
    """The folder holding ``s2d_plan`` and ``runners`` (site-packages, or a checkout)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "runners" / "__init__.py").is_file() else None


def safe_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A runner's environment that imports nothing from its working directory: Python's
    safe path (PYTHONSAFEPATH, inherited by torchrun's and the verifier's children), no
    empty or relative PYTHONPATH entries, and the project's own folder first, so an
    editable or uninstalled checkout stays importable (issue 23: a ``runners/`` in the
    directory where ``execute`` ran executed inside every stage)."""
    env = dict(os.environ if env is None else env, PYTHONSAFEPATH="1")
    env.setdefault(CALLER_CWD_ENV, os.getcwd())  # relative paths in the graph (contract.files.caller_path)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.isabs(p)]
    root = project_root()
    if root is not None:
        paths = [str(root)] + [p for p in paths if p != str(root)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if not paths:
        env.pop("PYTHONPATH")
    return env


def start(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a runner with stdout and stderr going to ``log_path``, in the folder of
    ``log_path`` (its run folder in the home), importing only from the installed
    packages and the project (``safe_env``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=safe_env(env), cwd=log_path.parent,
            preexec_fn=functools.partial(_die_with_parent, os.getpid()) if _PRCTL is not None else None)


def detect_gpus() -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`, else 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
            return sum(1 for line in out.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            return 0
    return 0


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def cmdline_mentions(pid: int, needle: str) -> bool:
    """Whether process ``pid`` still runs our command (guards against pid reuse)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return needle.encode() in f.read()
    except OSError:
        return False


def kill_stale(pid: int | None, spec_path: str | None) -> bool:
    """Kill what is left of a runner whose executor died: every process of its process
    group (the runner started it as session leader) that still runs our stage spec, so
    torchrun/accelerate workers orphaned by their launcher's death go too."""
    if not pid or not spec_path:
        return False
    killed = False
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            other = int(proc.name)
            with open(proc / "stat") as f:
                pgrp = int(f.read().rsplit(")", 1)[1].split()[2])
        except (OSError, ValueError, IndexError):
            continue
        if pgrp == pid and cmdline_mentions(other, spec_path):
            try:
                os.kill(other, signal.SIGKILL)
                killed = True
            except (ProcessLookupError, PermissionError):
                pass
    return killed


def log_tail(path: Path, lines: int = 20, max_bytes: int = 16384) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def reason_from_log(tail: str, fallback: str) -> str:
    """The one-line reason: the runner's own ``stage ID failed: Type: message`` line, else
    the exception of the runner's last traceback with the first
    line of its message (``ValueError: no such file ...``), else its last non-empty
    stderr line, else ``fallback``. A message that runs over several lines is summarized
    by its first, not by its last (which is often only the end of a sentence)."""
    lines = tail.splitlines()
    # a runner prints "stage ID failed: Type: message" after its traceback (runners.common)
    own = [line.strip() for line in lines if line.startswith("stage ") and " failed: " in line]
    if own:
        return own[-1][:300]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        for line in lines[starts[-1] + 1:]:
            if line.strip() and not line[:1].isspace():
                head = line.strip()
                if head.endswith(":"):  # the message starts on the next line
                    rest = next((x.strip() for x in lines[lines.index(line) + 1:] if x.strip()), "")
                    head = f"{head} {rest}".strip()
                return head[:300]
    for line in reversed(lines):
        if line.strip():
            return line.strip()[:300]
    return fallback


@dataclass
class MetricTail:
    """Reads a runner's metrics file incrementally; keeps a partial last line for later.

    ``read()`` returns the complete lines written since the last call, unparsed: the
    history parses them inside DuckDB (``HistoryWriter.append_metrics``), which is
    several times faster than ``json.loads`` per line. Only what the executor needs
    itself is parsed here: artifact announcements and the latest step and metric for
    the progress display. ``offset`` is how many bytes are fully consumed.
    """

    path: Path
    offset: int = 0
    _rest: bytes = b""
    artifacts: list[tuple[str, str]] = field(default_factory=list)
    last_step: int | None = None
    last_metric: tuple[str, float | None] | None = None

    def lines_left(self) -> int:
        """Lines on disk past what was read (0 when the file cannot be read)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                return len(f.read().splitlines())
        except OSError:
            return 0

    def read(self, final: bool = False, max_bytes: int = 64 << 20) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset + len(self._rest))
                chunk = f.read(max_bytes)
        except FileNotFoundError:
            return []
        data = self._rest + chunk
        cut = data.rfind(b"\n") + 1
        if final and cut < len(data):
            cut = len(data)  # the runner is gone: a last line without newline still counts
        complete, self._rest = data[:cut], data[cut:]
        self.offset += len(complete)
        text = complete.decode("utf-8", "replace")
        lines = text.splitlines()
        if '"artifact"' in text:
            for line in lines:
                if '"artifact"' in line:
                    d = _loads(line)
                    if d and "artifact" in d and "path" in d:
                        self.artifacts.append((str(d["artifact"]), str(d["path"])))
        self._note_progress(lines)
        return lines

    def _note_progress(self, lines: list[str]) -> None:
        seen = None
        for line in reversed(lines[-32:]):
            d = _loads(line)
            if not d or "key" not in d or "step" not in d:
                continue
            if seen is None:
                seen = d
                self.last_step = d["step"] if isinstance(d["step"], int) else self.last_step
            if d["key"] in KEY_METRICS:
                seen = d
                break
        if seen is not None:
            value = seen.get("value")
            self.last_metric = (str(seen["key"]), value if isinstance(value, (int, float)) else None)


def _loads(line: str) -> dict | None:
    try:
        d = json.loads(line)
    except ValueError:
        return None
    return d if isinstance(d, dict) else None
