"""The executor: runs a stage graph, resumably, each stage in its own process.

    result = execute_graph(load_graph("graph.json"), Path(".s2d"))
    result.exit_code   # 0 when every stage FINISHED or was CACHED

How it departs from "run the stages in order":

1. *Content-addressed stages* (``s2d_plan.run.identity``). Output lives in
   ``<home>/stages/<id>-<key>/`` and counts as done only with a ``COMPLETE`` marker; such
   a stage is recorded CACHED and not run again.
2. *Resume.* A runner works in ``<output>.partial`` (the same path on every attempt), so
   a runner that checkpoints resumes where the last attempt stopped. The executor keeps
   that directory only for kinds the contract marks resumable; otherwise, and under
   ``--force``, it starts the stage clean.
3. *Crashes.* Any stage still RUNNING in the history when an executor opens it was left
   by a dead executor (the history has one writer at a time, so none is alive). A local
   one is marked FAILED with its log tail, the rest of its metrics file is ingested, any
   surviving runner process group is killed, and the stage runs again as a new attempt.
   Cluster work outlives its executor: this run re-attaches to that Slurm job or those
   Ray actors and goes on with the same attempt (``recovery.reattach``).
4. *Failures stay local.* A failed stage's dependants are SKIPPED, independent branches go
   on, and the command exits 1 with one line per failure. SIGINT/SIGTERM/SIGHUP stops
   running stages (SIGINT first, SIGKILL after a grace period), records them KILLED and
   flushes every metric they wrote.

Stages run side by side when GPUs allow. Where a stage runs is its launcher's business
(``s2d_plan.run.launchers``: local processes, Ray actors, Slurm jobs); the rest above is
the same on every backend. On a cluster, an attempt whose node died (``handle.lost``) is
recorded FAILED with that cause and the stage runs again, up to the cluster's
``retries``, resuming from its checkpoint in the shared work directory.
"""

from __future__ import annotations

import hashlib
import signal
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from s2d_plan.cluster import ClusterSpec
from s2d_plan.contract import EVIDENCE_FILE, StageSpec, is_complete, kind_of, write_spec
from s2d_plan.errors import GraphError, HistoryError, S2DError
from s2d_plan.graph import StageGraph
from s2d_plan.history.store import HistoryWriter, utcnow
from s2d_plan.paths import attempt_file, partial_dir, resolve_home, stage_dir
from s2d_plan.run import procs as _procs, staging
from s2d_plan.run.identity import cache_keys, resolve_inputs
from s2d_plan.run.launchers import Busy, Job, Launcher, Slot, make_launcher
from s2d_plan.run.progress import LiveDisplay, PlainDisplay
from s2d_plan.run.recovery import Adopted, reattach, recover_stale
from s2d_plan.run.state import RunResult, StageState, StopRequest

DONE = ("FINISHED", "CACHED")
STOP_GRACE_S = 10.0  # how long a stopped runner gets to exit after SIGINT
HEARTBEAT_S = 2.0  # how often RUNNING stages' heartbeat is refreshed in the history


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:4]


# -- the driver ------------------------------------------------------------------------
def execute_graph(graph: StageGraph, home: Path | str | None = None, force: Iterable[str] = (), *,
                  display: PlainDisplay | LiveDisplay | None = None, gpus: int | None = None, max_parallel: int = 4,
                  poll_s: float = 0.1, flush_rows: int = 50_000, flush_s: float = 1.0,
                  run_id: str | None = None, cluster: ClusterSpec | None = None) -> RunResult:
    """Run ``graph`` under ``home``; return what happened (never raises for a failed stage).

        result = execute_graph(graph, Path(".s2d"), force=["student_opd"])
        print(result.status, result.stages)

    ``cluster`` (a ``ClusterSpec``; default: the graph's own) picks the launcher.
    """
    home = resolve_home(home)
    force = list(force)
    missing = [f for f in force if f not in {s.id for s in graph.stages}]
    if missing:
        raise GraphError(f"--force names no stage of this graph: {', '.join(missing)}")
    cluster = graph.cluster if cluster is None else cluster
    local = getattr(cluster, "backend", "local") == "local"
    launcher = make_launcher(cluster, gpus=(_procs.detect_gpus() if gpus is None else gpus) if local else 0,
                             max_parallel=max_parallel)
    launcher.check(home)  # an unreachable cluster fails here, before the history is touched
    runner = _Executor(graph, home, force, launcher, poll_s=poll_s, flush_rows=flush_rows,
                       flush_s=flush_s, run_id=run_id or new_run_id())
    display = display or PlainDisplay(out=sys.stderr)  # progress on stderr: results are the return value
    with display:
        return runner.run(display)


class _Executor:
    def __init__(self, graph: StageGraph, home: Path, force: Sequence[str], launcher: Launcher, *,
                 poll_s: float, flush_rows: int, flush_s: float, run_id: str):
        self.graph, self.home, self.run_id = graph, home, run_id
        self.launcher, self.poll_s = launcher, poll_s
        self.flush_rows, self.flush_s = flush_rows, flush_s
        keys = cache_keys(graph)
        forced = set(force)
        for f in force:
            forced |= graph.dependants(f)
        self.states = {s.id: StageState(s, keys[s.id], stage_dir(home, s.id, keys[s.id]), forced=s.id in forced)
                       for s in graph.topological_order()}
        self.stop = StopRequest()
        self.hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s2d-hash")
        self.pending_hashes: list[Future] = []
        self.last_flush = time.monotonic()
        self.last_heartbeat = 0.0

    # -- lifecycle ---------------------------------------------------------------------
    def run(self, display: PlainDisplay | LiveDisplay) -> RunResult:
        self.display = display
        self.db = HistoryWriter(self.home)
        started = time.monotonic()
        self.stop.install()
        try:
            keys = {sid: st.key for sid, st in self.states.items()}
            forced = [sid for sid, st in self.states.items() if st.forced]
            adopted, notes = reattach(self.db, self.launcher, self.home, keys, forced, self.run_id)
            for line in notes + recover_stale(self.db, self.home, self.run_id):
                display.event(line)
            self.db.begin_live(self.run_id)
            self._record_start(adopted)
            try:
                self._loop()
            except BaseException as exc:  # a bug, or the history failing: leave no runner behind
                self._abandon(exc)
                raise
            return self._finish(time.monotonic() - started)
        finally:
            self.launcher.close()
            self.stop.restore()
            self.hashing.shutdown(wait=True)
            self.db.close()

    def _abandon(self, exc: BaseException) -> None:
        running = [st for st in self._running() if st.proc is not None]  # not one whose start raised
        for st in running:  # first the processes: the history may be what failed
            st.proc.signal(signal.SIGKILL)
            st.proc.wait()
            st.ended = time.monotonic()
        broken = self.db.broken
        why = str(broken) if broken is not None else f"executor error: {type(exc).__name__}: {exc}"
        try:
            for st in running:
                st.buffered.extend(st.tail.read(final=True))
                self._flush(st)  # commits lines and offset together, or neither
                self._record_end(st, "KILLED", st.proc.returncode, why)
            self.db.finish_run(self.run_id, "KILLED" if broken is not None else "FAILED", why)
        except Exception:
            pass  # the next execute recovers whatever is still marked RUNNING
        if broken is not None:  # a full disk or an I/O error: one line, no traceback
            kept = sum(len(st.buffered) + st.tail.lines_left() for st in self.states.values() if st.tail)
            what = "disk full" if broken.disk_full else "history write failed"
            raise HistoryError(f"{what} at {broken.path}: run KILLED, {kept} metric lines kept on disk "
                               f"for the next run to ingest ({str(broken.cause).splitlines()[0]})") from None

    def _record_start(self, adopted: dict[str, Adopted]) -> None:
        g = self.graph
        plan_hash = g.plan_hash or hashlib.sha256(g.to_json().encode()).hexdigest()[:16]
        est = g.estimated.gpu_hours or sum(s.estimated.gpu_hours for s in g.stages)
        self.db.start_run(self.run_id, g.plan, plan_hash, g.model_dump_json(exclude_none=True), est)
        for position, st in enumerate(self.states.values()):
            self.db.add_stage(self.run_id, position, st.stage, st.key, st.output_dir)
        self.db.record_trials(self.run_id, g.meta.get("trials"))
        for sid, a in adopted.items():
            self._adopt(self.states[sid], a)
        for st in self.states.values():
            if st.status == "PENDING" and not st.forced and staging.reclaim_aside(st.output_dir):
                st.status = "CACHED"
                st.attempt = self.db.producer_attempt(st.stage.id, st.key)
                self.db.update_stage(self.run_id, st.stage.id, status="CACHED", gpu_hours=0.0, attempt=st.attempt)
                self.display.event(f"{st.stage.id}: CACHED ({st.output_dir.name})")
        self.db.publish(force=True)

    def _adopt(self, st: StageState, a: Adopted) -> None:
        """Go on with an attempt a dead executor left running: same attempt and job, its
        metrics tailed from what the history already holds."""
        s = st.stage
        st.attempt, st.proc, st.slot, st.status = a.attempt, a.handle, a.slot, "RUNNING"
        st.spec_path, st.log_path, st.tail = a.spec_path, a.log_path, _procs.MetricTail(a.metrics_path)
        while st.tail.offset < a.offset and st.tail.read(max_bytes=a.offset - st.tail.offset):
            pass  # up to what the history holds: only for the artifacts announced there
        age = (utcnow() - a.start).total_seconds() if a.start else 0.0
        st.started = time.monotonic() - age  # wall time counts from the attempt's real start
        self.db.start_stage(self.run_id, s.id, a.attempt, None, a.log_path, a.metrics_path)
        self.db.update_stage(self.run_id, s.id, start_time=a.start, metrics_offset=a.offset)
        self.db.record_placements(self.run_id, s.id, a.attempt, self.launcher.name, a.handle.ref, a.handle.placements)
        self.display.event(f"{s.id}: RUNNING attempt {a.attempt}, re-attached ({a.handle.describe()}")

    # -- the loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            if self.stop.signal is not None:
                self._stop_running()
            for st in self._running():
                self._poll(st)
            if self.stop.signal is None:
                self._skip_blocked()
                self._launch_ready()
            self._collect_hashes()
            self._flush_if_due()
            self.display.refresh(self.states.values())
            if not self._running():
                if self.stop.signal is not None or not any(st.status == "PENDING" for st in self.states.values()):
                    break
            time.sleep(self.poll_s)

    def _running(self) -> list[StageState]:
        return [st for st in self.states.values() if st.status == "RUNNING"]

    def _skip_blocked(self) -> None:
        for st in self.states.values():
            if st.status != "PENDING":
                continue
            bad = [n for n in st.stage.needs if self.states[n].status in ("FAILED", "SKIPPED", "KILLED")]
            if bad:
                st.status = "SKIPPED"
                st.error = f"skipped: {bad[0]} {self.states[bad[0]].status.lower()}"
                self.db.update_stage(self.run_id, st.stage.id, status="SKIPPED", error=st.error)
                self.display.event(f"{st.stage.id}: SKIPPED ({bad[0]} {self.states[bad[0]].status})")

    def _launch_ready(self) -> None:
        for st in self.states.values():
            if st.status != "PENDING" or any(self.states[n].status not in DONE for n in st.stage.needs):
                continue
            slot = self.launcher.allocate(st.stage, self._running())  # None: it must wait
            if slot is not None:
                self._launch(st, slot)

    # -- one stage -------------------------------------------------------------------
    def _launch(self, st: StageState, slot: Slot) -> None:
        s = st.stage
        st.attempt = self.db.next_attempt(s.id, st.key)
        work = partial_dir(st.output_dir)
        aside = st.output_dir.with_name(f"{st.output_dir.name}.replaced-{self.run_id}") if st.forced else None
        st.aside = staging.prepare_dirs(st.output_dir, work, st.forced or not kind_of(s.kind).resumable, aside)
        st.spec_path = attempt_file(self.home, self.run_id, s.id, st.attempt, "spec.json")
        st.log_path = attempt_file(self.home, self.run_id, s.id, st.attempt, "log")
        metrics_path = attempt_file(self.home, self.run_id, s.id, st.attempt, "metrics.jsonl")
        outputs = {sid: other.output_dir for sid, other in self.states.items()}
        write_spec(StageSpec(run_id=self.run_id, attempt=st.attempt, stage=s, inputs=resolve_inputs(s, outputs),
                             output_dir=st.output_dir, work_dir=work, metrics_path=metrics_path,
                             device="cuda" if slot.gpu_ids else "auto", cache_key=st.key,
                             tracking=self.graph.tracking), st.spec_path)
        job = Job(f"s2d-{self.run_id}-{s.id}-{st.attempt}", s.kind, st.spec_path, st.log_path,
                  gpus_asked=s.resources.gpus, avoid=tuple(sorted(st.avoid)))
        st.tail = _procs.MetricTail(metrics_path)
        st.slot, st.started, st.status = slot, time.monotonic(), "RUNNING"
        try:
            st.proc = self.launcher.start(job, slot)
        except Busy:  # the cluster shrank or is shared: wait for the next free slot
            st.status, st.started, st.slot = "PENDING", None, Slot()
            return
        except (OSError, S2DError) as exc:
            st.ended = time.monotonic()
            self._record_end(st, "FAILED", None, f"could not start on {self.launcher.name}: {exc}")
            return
        self.db.start_stage(self.run_id, s.id, st.attempt, st.proc.pid, st.log_path, metrics_path)
        self.db.record_placements(self.run_id, s.id, st.attempt, self.launcher.name, st.proc.ref, st.proc.placements)
        self.db.publish(force=True)
        short = (f" on {slot.gpus} of the {s.resources.gpus} GPUs it asks for"
                 if slot.gpu_ids and slot.gpus < s.resources.gpus else "")
        self.display.event(f"{s.id}: RUNNING attempt {st.attempt}{short} ({st.proc.describe()}"
                           + (f"; {st.proc.note}" if st.proc.note else ""))

    def _poll(self, st: StageState) -> None:
        code = st.proc.poll()
        lines = st.tail.read(final=code is not None)
        st.buffered.extend(lines)
        if code is None:
            if len(st.buffered) >= self.flush_rows:
                self._flush(st)
            return
        while lines:  # drain whatever is left beyond one read's cap
            if len(st.buffered) >= self.flush_rows:
                self._flush(st)
            lines = st.tail.read(final=True)
            st.buffered.extend(lines)
        st.ended = time.monotonic()
        self._flush(st)
        if code == 0 and is_complete(st.output_dir):
            self._record_end(st, "FINISHED", code, None)
            self._after_success(st)
            return
        tail = _procs.log_tail(st.log_path) if st.log_path else ""
        if self.stop.signal is not None:
            status, reason = "KILLED", f"stopped by {signal.Signals(self.stop.signal).name}"
        elif code == 0:
            status, reason = "FAILED", "runner exited 0 without a COMPLETE output"
        elif st.proc.lost:
            status, reason = "FAILED", st.proc.lost
        else:
            fallback = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            status, reason = "FAILED", _procs.reason_from_log(tail, fallback)
        self._record_end(st, status, code, reason + ("\n--- log tail ---\n" + tail if tail else ""))
        self._retry_if_lost(st)

    def _retry_if_lost(self, st: StageState) -> None:
        """A node that died took the attempt with it: run the stage again (elsewhere, from
        its checkpoint) while the cluster's retry budget lasts; the FAILED attempt stays
        in ``placements`` with its cause."""
        if st.status != "FAILED" or not st.proc.lost or self.stop.signal is not None:
            return
        if st.retries >= self.launcher.retries:
            return
        st.avoid |= {p.node for p in st.proc.placements}  # a launcher that can keeps the retry off them
        st.retries += 1
        st.status = "PENDING"
        self.db.update_stage(self.run_id, st.stage.id, status="PENDING")
        self.display.event(f"{st.stage.id}: retry {st.retries} of {self.launcher.retries} after: {st.proc.lost}")

    def _record_end(self, st: StageState, status: str, code: int | None, error: str | None) -> None:
        st.status, st.error = status, error
        if staging.settle_aside(st.output_dir, st.aside):
            error = (error or "") + "\n(the previous complete output was kept)"
            st.error = error
        wall = st.elapsed() or 0.0
        self.db.finish_stage(self.run_id, st.stage.id, status, wall, st.stage.resources.gpus, code, error)
        if st.proc is not None:
            self.db.end_placements(self.run_id, st.stage.id, st.attempt, status, error)
        first = (error or "").splitlines()[0] if error else ""
        self.display.event(f"{st.stage.id}: {status} after {wall:.1f}s" + (f": {first}" if first else ""))
        self.db.publish(force=True)

    def _after_success(self, st: StageState) -> None:
        evidence = st.output_dir / EVIDENCE_FILE
        if evidence.exists():
            self.db.record_evidence(self.run_id, st.stage.id, evidence)
        for name, rel in st.tail.artifacts:
            path = st.output_dir / rel
            self.pending_hashes.append(self.hashing.submit(
                staging.artifact_row, self.run_id, st.stage.id, name, path, st.attempt, st.key))

    def _collect_hashes(self, wait: bool = False) -> None:
        keep = []
        for fut in self.pending_hashes:
            if wait or fut.done():
                row = fut.result()
                if row:
                    self.db.record_artifact(row)
            else:
                keep.append(fut)
        self.pending_hashes = keep

    def _flush(self, st: StageState) -> None:
        # the buffer is dropped only once its lines and the offset past them committed:
        # a failed write (disk full) leaves both where they were
        self.db.append_metrics(self.run_id, st.stage.id, st.attempt, st.key, st.buffered, st.tail.offset)
        st.buffered = []

    def _flush_if_due(self) -> None:
        now = time.monotonic()
        if now - self.last_flush >= self.flush_s:
            self.last_flush = now
            for st in self._running():
                if st.buffered:
                    self._flush(st)
        if now - self.last_heartbeat >= HEARTBEAT_S and self._running():
            self.last_heartbeat = now
            self.db.heartbeat(self.run_id)
        self.db.publish()

    def _stop_running(self) -> None:
        now = time.monotonic()
        if self.stop.deadline is None:
            self.stop.deadline = now + STOP_GRACE_S
            self.display.event(f"{signal.Signals(self.stop.signal).name}: stopping "
                               f"{len(self._running())} running stage(s)")
            for st in self._running():
                st.proc.signal(signal.SIGINT)
        elif now >= self.stop.deadline:
            for st in self._running():
                st.proc.signal(signal.SIGKILL)

    # -- the end -----------------------------------------------------------------------
    def _finish(self, seconds: float) -> RunResult:
        self._collect_hashes(wait=True)
        for st in self.states.values():
            if st.status == "PENDING":  # only when stopped by a signal
                st.status = "SKIPPED"
                self.db.update_stage(self.run_id, st.stage.id, status="SKIPPED", error="not started: the run was stopped")
        statuses = {sid: st.status for sid, st in self.states.items()}
        failures = [f"{st.status} {sid}: {(st.error or '').splitlines()[0] if st.error else ''}"
                    for sid, st in self.states.items() if st.status in ("FAILED", "KILLED")]
        if self.stop.signal is not None:
            status, code = "KILLED", 128 + self.stop.signal
        elif failures or any(v == "SKIPPED" for v in statuses.values()):
            status, code = "FAILED", 1
        else:
            status, code = "FINISHED", 0
        self.db.finish_run(self.run_id, status, "; ".join(failures) or None)
        counts = {v: list(statuses.values()).count(v) for v in dict.fromkeys(statuses.values())}
        summary = ", ".join(f"{n} {k.lower()}" for k, n in counts.items())
        self.display.event(f"run {self.run_id} {status} in {seconds:.1f}s: {summary}")
        return RunResult(self.run_id, status, statuses, failures, code, self.home)

