"""The math verifier shared by grpo, rollout, eval and probe: math-verify behind a hard timeout.

    >>> v = Verifier(workers=1)
    >>> v.score("\\\\frac12", "so the answer is \\\\boxed{0.5}.").score
    1.0
    >>> v.close()

Extraction policy (what counts as an answer):

- **Gold** is parsed as if it were boxed: ``\\frac12`` becomes ``\\boxed{\\frac12}``
  (math-verify finds nothing in a bare ``\\sqrt{2}``, and reads a bare ``(1, 2]`` as 2).
  A gold that already contains ``\\boxed{}`` is parsed as written; one in ``$...$`` is
  unwrapped first. A gold that does not parse to a math expression is *bad gold*: it is
  counted and reported (``verifier/bad_gold``), and the completion scores 0, never 1.
- **Completion**, first match wins:
  1. ``\\boxed{...}`` (several boxed answers joined by "and"/"," read as a set);
  2. an anchored answer: "final answer is X", "answer: X", "the answer is $X$", with X
     in LaTeX or a plain expression (``1/2``, ``0.5``);
  3. a completion that is nothing but one expression (``0.5``, ``$\\frac12$``,
     ``(1,2]``; under 80 characters, no word of two or more letters outside LaTeX
     commands) is read whole.
  A number that merely appears last in prose does *not* count (``x = 3 so 4`` has no
  answer): rewarding the last number of a wrong derivation teaches the wrong thing.
- Comparison is math-verify's ``verify(gold, answer)``, gold first (it is not symmetric):
  numbers to 6 decimal places (``1/2`` = ``0.5``), symbolic equality, intervals, sets.

Timeouts: math-verify times out with ``SIGALRM``, which raises off the main thread (TRL
may call reward functions from one) and cannot stop a hang inside C code. So every
parse/verify runs in a persistent worker *process* (``python -m runners.verifier
--worker``), which sets its own alarm (soft timeout); the parent also holds a hard
deadline per call and kills and restarts a worker that overruns it. Either way the pair
scores 0 with status ``timeout``. Calls are safe from any thread. Requests are pipelined
to the workers, so the overhead per pair is a JSON line each way (about 0.05 ms; see
tests/test_verifier.py), not a round trip.

Statuses: ``ok`` (scored 0 or 1), ``no_answer`` (nothing extracted from the completion),
``bad_gold``, ``timeout``, ``error``.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import selectors
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

SOFT_TIMEOUT_S = 3.0  # the worker's own alarm per pair
HARD_MARGIN_S = 2.0  # the parent's deadline = soft + margin (a hang the alarm cannot stop)
MAX_SHOWN = 200  # characters of a parsed expression sent back (keeps pipe messages small)
PIPELINE_DEPTH = 16  # requests in flight per worker
PIPE_BUDGET = 48 * 1024  # bytes in flight per worker: below the 64 KiB pipe buffer


@dataclass
class Verdict:
    score: float  # 1.0 correct, 0.0 otherwise (timeouts, bad gold and no answer score 0)
    status: str  # ok | no_answer | bad_gold | timeout | error
    gold_parsed: list[str] = field(default_factory=list)
    answer_parsed: list[str] = field(default_factory=list)
    detail: str = ""


def batch_metrics(verdicts: Sequence[Verdict], prefix: str = "verifier/") -> dict[str, float]:
    """Per-batch verifier health: accuracy and the share of each failure kind."""
    n = max(1, len(verdicts))
    counts = Counter(v.status for v in verdicts)
    return {
        f"{prefix}accuracy": sum(v.score for v in verdicts) / n,
        f"{prefix}parse_failures": counts["no_answer"] / n,
        f"{prefix}bad_gold": counts["bad_gold"] / n,
        f"{prefix}timeouts": counts["timeout"] / n,
        f"{prefix}errors": counts["error"] / n,
    }


# ----------------------------------------------------------------------------- worker side

_BARE_PROSE = re.compile(r"(?<!\\)\b[A-Za-z]{2,}\b")


class _Alarm(BaseException):  # BaseException: math-verify's `except Exception` must not eat it
    pass


def _configs():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    anchored = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
                ExprExtractionConfig(try_extract_without_anchor=False)]
    whole = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return anchored, whole


def _show(items) -> list[str]:
    return [str(x)[:MAX_SHOWN] for x in items]


class _Checker:
    """What the worker process does for one pair. Gold parses are cached (one gold, G answers)."""

    def __init__(self):
        from math_verify import parse, verify

        self.parse, self.verify = parse, verify
        self.anchored, self.whole = _configs()
        self.gold_cache: dict[str, list] = {}

    def parse_gold(self, gold: str) -> list:
        if gold in self.gold_cache:
            return self.gold_cache[gold]
        text = gold.strip()
        if text.startswith("$") and text.endswith("$"):
            text = text.strip("$").strip()
        if "\\boxed" not in text:
            text = "\\boxed{" + text + "}"
        parsed = [p for p in self.parse(text, parsing_timeout=None, fallback_mode="no_fallback") if not isinstance(p, str)]
        if len(self.gold_cache) > 4096:
            self.gold_cache.clear()
        self.gold_cache[gold] = parsed
        return parsed

    def parse_answer(self, answer: str) -> list:
        parsed = self.parse(answer, self.anchored, parsing_timeout=None)
        if not parsed:
            bare = answer.strip()
            if bare and len(bare) < 80 and not _BARE_PROSE.search(bare):
                parsed = self.parse(bare, self.whole, parsing_timeout=None)
        return parsed

    def check(self, gold: str, answer: str) -> dict:
        if not isinstance(gold, str) or not isinstance(answer, str):
            return asdict(Verdict(0.0, "error", detail="gold and answer must be strings"))
        g = self.parse_gold(gold)
        if not g:
            return asdict(Verdict(0.0, "bad_gold", [], [], f"gold '{gold[:80]}' does not parse"))
        a = self.parse_answer(answer)
        if not a:
            return asdict(Verdict(0.0, "no_answer", _show(g), [],
                                  "no \\boxed{}, no 'answer is ...', and not a bare expression"))
        ok = self.verify(g, a, timeout_seconds=None)
        return asdict(Verdict(1.0 if ok else 0.0, "ok", _show(g), _show(a)))


def _worker_main(soft_timeout: float) -> None:
    """Serve JSON lines {"id", "gold", "answer"} on stdin, answer with verdict lines."""
    import logging
    import signal

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # the "timeout disabled" notice
    checker = _Checker()

    def on_alarm(signum, frame):
        raise _Alarm()

    signal.signal(signal.SIGALRM, on_alarm)
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        signal.setitimer(signal.ITIMER_REAL, soft_timeout)
        try:
            res = checker.check(req["gold"], req["answer"])
        except _Alarm:
            res = asdict(Verdict(0.0, "timeout", detail=f"over {soft_timeout:g}s (worker alarm)"))
        except Exception as exc:  # a verifier bug must not take the stage down: score 0, say why
            res = asdict(Verdict(0.0, "error", detail=f"{type(exc).__name__}: {exc}"[:300]))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        res["id"] = req["id"]
        out.write(json.dumps(res) + "\n")
        out.flush()


# ----------------------------------------------------------------------------- parent side


def _worker_env() -> dict[str, str]:
    """The worker's environment: Python's safe path (nothing imported from the working
    directory, where a planted ``runners/`` would run in every worker) and this project's
    folder first on PYTHONPATH, so a checkout that is not installed still imports."""
    root = str(Path(__file__).resolve().parent.parent)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.isabs(p) and p != root]
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONSAFEPATH="1",
                PYTHONPATH=os.pathsep.join([root, *paths]))


class _Worker:
    """One worker process and the requests it holds, oldest first. Requests are pipelined (the
    worker never waits on a round trip); the oldest is the one being worked on, so its deadline
    runs from the moment the previous answer came back."""

    def __init__(self, soft_timeout: float):
        env = _worker_env()
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "runners.verifier", "--worker", str(soft_timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        self.buf = b""
        self.ready = False
        self.inflight: deque[tuple[int, int]] = deque()  # (request index, bytes)
        self.head_since = 0.0  # when the oldest request in flight started being worked on

    def can_take(self, size: int) -> bool:
        # Bound the bytes in flight below the pipe buffer: a write must never block while the
        # worker hangs on an earlier request (the deadline could not be enforced).
        return not self.inflight or (len(self.inflight) < PIPELINE_DEPTH and
                                     sum(n for _, n in self.inflight) + size <= PIPE_BUDGET)

    def send(self, idx: int, line: bytes) -> None:
        if not self.inflight:
            self.head_since = time.monotonic()
        self.proc.stdin.write(line)
        self.proc.stdin.flush()
        self.inflight.append((idx, len(line)))

    def read_lines(self) -> list[dict]:
        chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
        if not chunk:
            raise EOFError
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        return [json.loads(x) for x in lines if x.strip()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


class Verifier:
    """A pool of verifier worker processes; ``score_many`` is safe to call from any thread.

    Workers start at construction (their imports overlap with model loading) and are
    restarted when one overruns the hard deadline or dies.
    """

    def __init__(self, workers: int = 1, soft_timeout: float = SOFT_TIMEOUT_S, hard_timeout: float | None = None,
                 start_timeout: float = 60.0):
        self.soft_timeout = soft_timeout
        self.hard_timeout = hard_timeout if hard_timeout is not None else soft_timeout + HARD_MARGIN_S
        self.start_timeout = start_timeout
        self._lock = threading.Lock()
        self._workers = [_Worker(soft_timeout) for _ in range(max(1, workers))]
        self.restarts = 0
        atexit.register(self.close)

    def score(self, gold: str, answer: str) -> Verdict:
        return self.score_many([gold], [answer])[0]

    def score_many(self, golds: Sequence[str], answers: Sequence[str]) -> list[Verdict]:
        if len(golds) != len(answers):
            raise ValueError(f"{len(golds)} gold answers for {len(answers)} completions")
        with self._lock:
            return self._run(list(golds), list(answers))

    def _await_ready(self, w: _Worker) -> None:
        deadline = time.monotonic() + self.start_timeout
        sel = selectors.DefaultSelector()
        sel.register(w.proc.stdout, selectors.EVENT_READ)
        try:
            while not w.ready:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError(f"verifier worker did not start in {self.start_timeout:g}s")
                try:
                    lines = w.read_lines()
                except EOFError:
                    err = w.proc.stderr.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"verifier worker failed to start (is math-verify installed?):\n{err}") from None
                w.ready = any(x.get("ready") for x in lines)
        finally:
            sel.close()

    def _replace(self, i: int, pending: deque) -> None:
        """Kill worker i and start another; what it still held goes back to the queue."""
        w = self._workers[i]
        for idx, _ in reversed(w.inflight):
            pending.appendleft(idx)
        w.kill()
        self._workers[i] = _Worker(self.soft_timeout)
        self.restarts += 1
        self._await_ready(self._workers[i])

    def _run(self, golds: list[str], answers: list[str]) -> list[Verdict]:
        results: list[Verdict | None] = [None] * len(golds)
        for w in self._workers:
            if not w.ready:
                self._await_ready(w)
        lines = [(json.dumps({"id": i, "gold": g, "answer": a}) + "\n").encode()
                 for i, (g, a) in enumerate(zip(golds, answers))]
        pending: deque[int] = deque(range(len(golds)))
        todo = len(golds)
        sel = selectors.DefaultSelector()
        try:
            while todo:
                for w in self._workers:  # fill every worker's pipeline
                    while pending and w.can_take(len(lines[pending[0]])):
                        idx = pending.popleft()
                        w.send(idx, lines[idx])
                busy = [(i, w) for i, w in enumerate(self._workers) if w.inflight]
                for i, w in busy:
                    sel.register(w.proc.stdout, selectors.EVENT_READ, i)
                now = time.monotonic()
                events = sel.select(max(0.0, min(w.head_since + self.hard_timeout - now for _, w in busy)))
                for key in list(sel.get_map().values()):
                    sel.unregister(key.fileobj)
                for key, _ in events:
                    todo -= self._collect(key.data, results, pending)
                todo -= self._expire(results, pending)
        finally:
            sel.close()
        return results  # type: ignore[return-value]

    def _collect(self, i: int, results: list, pending: deque[int]) -> int:
        """Read what worker ``i`` answered; returns how many requests it settled."""
        w = self._workers[i]
        try:
            got = w.read_lines()
        except EOFError:  # the worker died: the request it was on errs, the rest retry
            idx, _ = w.inflight.popleft()
            results[idx] = Verdict(0.0, "error", detail="verifier worker died")
            self._replace(i, pending)
            return 1
        for res in got:
            idx = res.pop("id")
            if w.inflight and w.inflight[0][0] == idx:
                w.inflight.popleft()
            results[idx] = Verdict(**res)
            w.head_since = time.monotonic()
        return len(got)

    def _expire(self, results: list, pending: deque[int]) -> int:
        """Kill every worker past the hard deadline on its oldest request; returns how many timed out."""
        now, expired = time.monotonic(), 0
        for i, w in enumerate(self._workers):
            if w.inflight and now - w.head_since > self.hard_timeout:
                idx, _ = w.inflight.popleft()
                results[idx] = Verdict(0.0, "timeout", detail=f"over {self.hard_timeout:g}s (worker killed)")
                self._replace(i, pending)
                expired += 1
        return expired

    def close(self) -> None:
        for w in self._workers:
            w.kill()
        self._workers = []


_shared: Verifier | None = None
_shared_lock = threading.Lock()


def shared_verifier(workers: int | None = None) -> Verifier:
    """The process-wide pool (started on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            # the trainer waits while rewards are computed, so the workers may use every core
            n = workers or max(1, min(4, os.cpu_count() or 1))
            _shared = Verifier(workers=n)
        return _shared


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        _worker_main(float(sys.argv[2]) if len(sys.argv) > 2 else SOFT_TIMEOUT_S)
    else:
        print("usage: python -m runners.verifier --worker [SOFT_TIMEOUT_S]  (internal; see s2d-plan reward-check)",
              file=sys.stderr)
        sys.exit(2)
