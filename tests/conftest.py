"""Shared fixtures: a fresh s2d home per test, graph files, the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
# The `simulate` stage kind is a test fake (tests/fakes/simulate.py): every executor the
# tests start, in this process or another, loads it from here.
os.environ["S2D_STAGE_PLUGINS"] = "tests.fakes.simulate"
# A test that names no home must never write the user's (`make` exports S2D_HOME=.s2d, a
# folder of the checkout): the session's default home is a temporary folder.
_SESSION_HOME = tempfile.mkdtemp(prefix="s2d-test-home-")
os.environ["S2D_HOME"] = _SESSION_HOME
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


# What a test run may leave in the checkout: Python's and pytest's own caches, the venv.
_RUN_LITTER = ("__pycache__", ".pytest_cache", ".venv", ".egg-info", ".ruff_cache", ".mypy_cache")


def _checkout_state() -> set[str] | None:
    """``git status`` of the checkout, ignored files included (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return {line for line in out.stdout.splitlines() if not any(part in line for part in _RUN_LITTER)}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _checkout_state()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Tests never write into the checkout: the suite fails if one did."""
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)
    before = session.config.stash.get(_BEFORE, None)
    after = _checkout_state()
    if before is None or after is None or getattr(session.config, "workerinput", None) is not None:
        return
    written = sorted(after - before)
    if written:
        session.config.stash[_WRITTEN] = written
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    written = config.stash.get(_WRITTEN, None)
    if written:
        terminalreporter.write_line("FAILED: the tests wrote into the checkout (git status changed):", red=True)
        for line in written[:50]:
            terminalreporter.write_line(f"  {line}")


_BEFORE = pytest.StashKey[set | None]()
_WRITTEN = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home for the whole session, for tests that only plan: its posterior is fitted
    once and shared (never a path inside the checkout)."""
    return tmp_path_factory.mktemp("shared-home")


@pytest.fixture
def s2d_home(tmp_path: Path) -> Path:
    """An empty home directory (history + stage outputs) for one test."""
    return tmp_path / "home"


def sim_stage(sid: str, needs: tuple[str, ...] = (), policy: str = "tiny/model", **params: Any) -> dict:
    """A `simulate` stage dict; ``gpus``/``teacher``/``data`` may be passed in params."""
    stage: dict[str, Any] = {"id": sid, "kind": "simulate", "policy": policy, "needs": list(needs)}
    for field in ("teacher", "data", "resources", "estimated"):
        if field in params:
            stage[field] = params.pop(field)
    stage["params"] = params
    return stage


@pytest.fixture
def write_graph(tmp_path: Path) -> Callable[..., Path]:
    """write_graph(stages, name="g.json", **top) -> path of a stage graph JSON file."""

    def write(stages: list[dict], name: str = "graph.json", **top: Any) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"plan": top.pop("plan", "test-plan"), "stages": stages, **top}))
        return path

    return write


def cli_env(home: Path) -> dict[str, str]:
    env = dict(os.environ, S2D_HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


@pytest.fixture
def cli(s2d_home: Path) -> Callable[..., subprocess.CompletedProcess]:
    """cli("history", "SELECT 1", input=None) runs `s2d-plan` for real in a subprocess."""

    def run(*args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "s2d_plan.cli", *args], input=input, text=True,
                              capture_output=True, env=cli_env(s2d_home), cwd=REPO, timeout=timeout)

    return run


@pytest.fixture
def start_cli(s2d_home: Path):
    """start_cli("execute", path) -> a running Popen of the CLI (killed at teardown)."""
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "s2d_plan.cli", *args], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(s2d_home), cwd=REPO)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """The tiny offline models and data (``python -m tinyworld.models``), built once per session
    (about 30 s); set S2D_TINY_DIR to reuse a build."""
    out = Path(os.environ.get("S2D_TINY_DIR") or tmp_path_factory.mktemp("tiny") / "models")
    r = subprocess.run([sys.executable, "-m", "tinyworld.models", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, every: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {predicate}")
