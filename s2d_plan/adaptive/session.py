"""Adaptive execution (``s2d-plan execute PLAN --adaptive``): plan, pilot, re-plan, run.

A session is one plan's pilot runs and its final run. Each decision (the candidates,
each pilot round and what it measured, who left the race, the choice, the end) is a
``decisions`` row written before the next step starts, so a session killed at any point
resumes from its last decision: a finished pilot round is read back, never re-run; an
interrupted one is run again as the same graph, which the executor resumes from the
stages' checkpoints; the final graph is stored with the choice and resumed likewise.

Successive halving is done here in synchronous rounds rather than with Optuna's pruner:
that pruner is asynchronous (it promotes the first trials unconditionally because Optuna
cannot suspend a trial; optuna/pruners/_successive_halving.py), which with two to four
candidates would spend most of the pilot budget on whichever ran first.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from s2d_plan.adaptive import pilots as P
from s2d_plan.adaptive.rounds import PilotRounds, SessionStopped
from s2d_plan.allocate.allocator import Context, SearchResult, allocate
from s2d_plan.allocate.explain import graph_meta
from s2d_plan.compiler import compile_graph, compile_stages
from s2d_plan.errors import InfeasibleError
from s2d_plan.graph import StageGraph
from s2d_plan.history.decisions import Decision, claim, new_session_id, open_session, record, trail
from s2d_plan.history.read import query
from s2d_plan.paths import resolve_home
from s2d_plan.plan.spec import load_plan
from s2d_plan.predict.calibration import load_calibration
from s2d_plan.predict.evidence import load_rates
from s2d_plan.predict.posterior import datum_from_json, paper_evidence, posterior_for
from s2d_plan.run.executor import execute_graph


@dataclass(frozen=True)
class AdaptiveResult:
    session: str
    run_id: str | None  # the final run
    status: str
    exit_code: int
    runs: tuple[str, ...]  # every run of the session, pilots first
    decisions: tuple[Decision, ...]


def session_key(spec: Any) -> str:
    """What identifies a session's plan: its content and its adaptive settings."""
    raw = spec.hash() + json.dumps(spec.adaptive.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def execute_adaptive(plan: str | Path, home: str | Path | None = None, display: Any = None,
                     say: Callable[[str], None] = print) -> AdaptiveResult:
    spec = load_plan(plan)
    holdout = P.holdout_size(spec)
    return Session(spec, P.training_spec(spec, holdout), resolve_home(home), holdout, display, say).run()


class Session(PilotRounds):
    def __init__(self, spec: Any, tspec: Any, home: Path, holdout: int, display: Any, say: Callable[[str], None]):
        self.spec, self.home, self.holdout, self.display, self.say = spec, home, holdout, display, say
        self.key = session_key(spec)
        self.claim = claim(home, self.key)  # refused here while another executor runs this plan
        self.sid = open_session(home, self.key) or new_session_id(self.key)
        self.trail = trail(home, self.sid)
        self.cal = load_calibration(home)
        self.evidence = paper_evidence() + self.cal.evidence
        post = posterior_for(self.evidence, home, self.cal.pins)
        self.ctx = Context.from_spec(tspec, load_rates(tspec, home), self.cal.costs, post)
        self.runs: list[str] = []
        if self.trail:
            say(f"adaptive: resuming session {self.sid} after its decision {self.trail[-1].seq} "
                f"({self.trail[-1].kind})")

    # -- the decision trail ------------------------------------------------------------
    def _find(self, kind: str, **ev: Any) -> Decision | None:
        return next((d for d in self.trail if d.kind == kind and all(d.evidence.get(k) == v for k, v in ev.items())),
                    None)

    def _decide(self, d: Decision) -> Decision:
        d = record(self.home, self.sid, self.key, d)
        self.trail.append(d)
        self.say(f"adaptive [{d.kind}] {d.why}")
        return d

    # -- the session -------------------------------------------------------------------
    def run(self) -> AdaptiveResult:
        try:
            return self._run()
        except SessionStopped as stop:
            self.say(f"adaptive: session {self.sid} stopped ({stop.result.status}); run the same command to resume it")
            return self._result(stop.result.run_id, stop.result.status, stop.result.exit_code)
        finally:
            self.claim.close()  # the next executor of this plan may resume the session

    def _run(self) -> AdaptiveResult:
        done = self._find("finished")
        if done is not None:
            self.say(f"adaptive: session {self.sid} already finished (run {done.run_id})")
            return self._result(done.run_id, done.evidence.get("status", "FINISHED"), 0)
        choice = self._find("choose")
        if choice is None:
            choice = self._choose()
        return self._final(choice)

    def _choose(self) -> Decision:
        result = allocate(self.ctx)
        finals = P.finals_of(result)
        opts = P.options(self.ctx, finals, self.spec.adaptive.max_candidates)
        cost = P.pilot_cost(self.ctx, opts[0].alloc, self.spec.adaptive.pilot_share)
        race = P.worth_piloting(opts, cost)
        groups = list(dict.fromkeys(g for g in (self._group(o.alloc) for o in race) if g))
        if self._find("candidates") is None:
            self._decide(Decision("candidates", f"{len(opts)} candidate(s); {len(groups)} distinct first stage(s) "
                                  f"worth a pilot ({', '.join(groups) or 'none'}); holdout {self.holdout} labels",
                                  candidates=[o.row() for o in opts],
                                  evidence={"groups": groups, "pilot_cost": cost}))
        if len(groups) < 2:
            why = ("one candidate: nothing to decide, it runs as recommended" if len(opts) == 1 else
                   "no pilot is worth its cost (every other candidate's value of information is under "
                   f"{max(cost, P.VOI_MIN):.2%}, what the pilots would cost the pick): it runs as recommended")
            return self._decide_final(self.ctx, result, why, {})
        ctx, result, done = self._race(groups, {g: next(o.alloc for o in race if self._group(o.alloc) == g)
                                                for g in groups})
        if result is None:
            return self._salvage(done)
        result, why = self._with_floors(result, done)
        return self._decide_final(ctx, result, why, done)

    def _with_floors(self, result: SearchResult, piloted: dict) -> tuple[SearchResult, str]:
        """Rank the re-planned candidates by the larger of their predicted mean and what
        their pilot already measured: a candidate that continues a pilot's student starts
        from it, so its measured holdout accuracy is a floor the closed forms may miss."""
        acc = P.measured_of(self.trail)
        finals = P.finals_of(result)
        finals = list({a.structure.label: a for a in finals}.values())

        def floor(a: Any) -> float | None:
            g = self._group(a)
            ok = g in piloted and P.kind_of(g) in ("student", "bridge") and P.continues(a.structure, g)
            return acc.get(g) if ok else None

        def value(a: Any) -> float:
            return max(a.prediction.mean or a.prediction.value, floor(a) or 0.0)

        ranked = sorted(finals, key=lambda a: -value(a))
        best = ranked[0]
        why = "after pilots" if acc else "without pilots: the pilot budget could not pay a round"
        if best.structure.label != result.best.structure.label and floor(best) is not None:
            why += (f"; its pilot measured {floor(best):.1%} on the holdout, above the "
                    f"{value(result.best):.1%} expected of {result.best.structure.label}")
        return replace(result, best=best, alternatives=[a for a in ranked[1:] if not a.structure.direct]), why

    def _salvage(self, piloted: dict[str, list[dict[str, Any]]]) -> Decision:
        """The pilots left less than any allocation needs: the best student a pilot trained
        (by its holdout accuracy, if above the untrained student's) is the result, as it stands."""
        acc = P.measured_of(self.trail)
        refs = P.refs_of(self.trail)
        students = {g: a for g, a in acc.items() if P.kind_of(g) in ("student", "bridge") and g in piloted}
        g = max(students, key=students.get, default=None)
        if g is None or students[g] <= refs.get("student", 1.0):
            g = None
        stages = list(piloted[g]) if g else []
        policy = "@" + stages[-1]["id"] if stages else self._student()
        ev = dict(self.eval_template, policy=policy, needs=[stages[-1]["id"]] if stages else [])
        chosen = f"pilot {g} as it stands" if g else "no training (student as is)"
        doc = {"plan": self.spec.name, "plan_hash": self.spec.hash(), "stages": stages + [ev],
               "cluster": self.spec.compute.cluster, "meta": {"adaptive": {"session": self.sid, "role": "final"},
                                                              "structure": chosen}}
        return self._decide(Decision("choose", f"{chosen}: the pilots left {self.ctx.budget - self._spent():.3g} "
                                     f"GPU-hours, short of any allocation ({self.short})", chosen=chosen,
                                     evidence={"graph": json.loads(StageGraph.model_validate(doc).model_dump_json()),
                                               "budget_left": self.ctx.budget - self._spent()}))

    def _decide_final(self, ctx: Context, result: SearchResult, why: str,
                      piloted: dict[str, list[dict[str, Any]]]) -> Decision:
        best = result.best
        graph = compile_graph(ctx, result, graph_meta(ctx, result))
        stages = [json.loads(s.model_dump_json()) for s in graph.stages]
        group = self._group(best)
        if group in piloted and P.continues(best.structure, group):
            stages = P.splice(stages, piloted[group], group, ctx.min_steps)
            why += f"; its first stage continues from pilot {piloted[group][-1]['id']}"
        doc = json.loads(graph.model_dump_json())
        doc.update(stages=stages, meta=dict(doc["meta"], adaptive={"session": self.sid, "role": "final"}))
        p = best.prediction
        return self._decide(Decision("choose", f"{best.structure.label}: predicted {p.median:.1%} "
                                     f"[{p.low:.1%}, {p.high:.1%}] ({why})", chosen=best.structure.label,
                                     predicted=(p.median, p.low, p.high),
                                     candidates=[P.Option(a, 0.0).row() for a in [best] + result.alternatives],
                                     evidence={"graph": doc, "budget_left": ctx.budget}))

    def _final(self, choice: Decision) -> AdaptiveResult:
        graph = StageGraph.model_validate(choice.evidence["graph"])
        self.say(f"adaptive: running the choice, {choice.chosen}")
        r = execute_graph(graph, self.home, display=self.display)
        self.runs.append(r.run_id)
        if r.status == "KILLED":
            raise SessionStopped(r)
        self._decide(Decision("finished", f"final run {r.run_id} {r.status}", run_id=r.run_id,
                              evidence={"status": r.status}))
        return self._result(r.run_id, r.status, r.exit_code)

    def _result(self, run_id: str | None, status: str, code: int) -> AdaptiveResult:
        _, rows = query("SELECT run_id FROM runs WHERE json_extract_string(graph, '$.meta.adaptive.session') = ? "
                        "ORDER BY start_time", self.home, [self.sid])
        return AdaptiveResult(self.sid, run_id, status, code, tuple(r[0] for r in rows), tuple(self.trail))

    # -- the race ----------------------------------------------------------------------
    def _race(self, groups: list[str], reps: dict[str, Any]) -> tuple[Context, SearchResult, dict]:
        budget = self.spec.adaptive.pilot_share * self.ctx.budget
        alive, data, steps = list(groups), [], {g: [] for g in groups}
        compiled = {g: compile_stages(self.ctx, a) for g, a in reps.items()}
        self.eval_template = json.loads(next(st for st in compiled[groups[0]] if st.kind == "eval").model_dump_json())
        ctx, result, ran = self.ctx, None, False
        for r in range(self.spec.adaptive.rounds):
            if r and len(alive) < 2:
                break
            row = self._find("pilot", round=r)
            if row is None:
                n = self._round_plan(r, alive, compiled, steps, budget)
                if n is None:
                    break
                row = self._pilot_round(r, alive, compiled, steps, n)
            if row.evidence.get("failed"):
                break
            for g in alive:
                steps[g].append(row.evidence["steps"][g])
            data += [datum_from_json(d) for d in row.evidence["data"]]
            ctx, result = self._replan(data)
            ran = True
            if result is None:
                break
            alive = self._prune(r, alive, result, budget)
        piloted = {g: P.pilot_stages(compiled[g], g, self._student(), steps[g]) for g in groups if steps[g]}
        if not ran:
            result = allocate(ctx)
        return ctx, result, piloted

    def _replan(self, data: list) -> tuple[Context, SearchResult]:
        """The allocation for what is left of the budget, under the posterior with the
        speed constants the pilots measured (``pilots.local_speeds``)."""
        speeds = P.local_speeds(self.ctx.post, data)
        left = max(self.ctx.budget - self._spent(), 1e-9)
        ctx = replace(self.ctx, budget=left, posterior=P.rescaled(self.ctx.post, speeds), notes=[])
        self.speeds = speeds
        try:
            return ctx, allocate(ctx)
        except InfeasibleError as e:  # the pilots spent (nearly) all of it
            self.short = str(e)
            return ctx, None

    def _prune(self, r: int, alive: list[str], result: SearchResult, budget: float) -> list[str]:
        finals = P.finals_of(result)
        value = {g: max([a.prediction.mean or a.prediction.value for a in finals if self._group(a) == g],
                        default=float("nan")) for g in alive}  # nan: no allocation of it fits what is left
        order = sorted(alive, key=lambda g: -value[g] if value[g] == value[g] else 2.0)
        keep = order[:max(1, math.ceil(len(alive) / 2))]
        if self._find("prune", round=r) is None:
            self._decide(Decision("prune", f"round {r}: predicted after pilots "
                                  + ", ".join(f"{g} {value[g]:.1%}" if value[g] == value[g] else f"{g} unaffordable"
                                              for g in order)
                                  + f"; {', '.join(keep)} stay{'s' if len(keep) == 1 else ''} in the race",
                                  candidates=[P.Option(a, 0.0).row() for a in finals],
                                  evidence={"round": r, "values": {g: v if v == v else None for g, v in value.items()},
                                            "keep": keep, "speeds": self.speeds,
                                            "spent": self._spent(), "pilot_budget": budget}))
        return keep

    def _group(self, a: Any) -> str | None:
        return P.group_of(a.structure, list(self.ctx.teachers))

    def _student(self) -> str:
        return self.spec.resolve_path(self.spec.student.model)

    def _spent(self) -> float:
        return sum(d.evidence.get("gpu_hours", 0.0) for d in self.trail if d.kind == "pilot")
