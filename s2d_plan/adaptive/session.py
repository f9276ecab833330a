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
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from s2d_plan.adaptive import pilots as P
from s2d_plan.allocate.allocator import Context, SearchResult, allocate
from s2d_plan.allocate.explain import graph_meta
from s2d_plan.compiler import compile_graph, compile_stages
from s2d_plan.errors import InfeasibleError
from s2d_plan.evidence.home import read_home
from s2d_plan.graph import StageGraph
from s2d_plan.history.decisions import Decision, claim, new_session_id, open_session, record, trail
from s2d_plan.history.read import query
from s2d_plan.paths import resolve_home
from s2d_plan.plan.spec import load_plan
from s2d_plan.planning import context_for
from s2d_plan.predict.posterior import datum_from_json, datum_to_json
from s2d_plan.run.executor import RunResult, execute_graph

MAX_PILOT_STEPS = 10_000


class SessionStopped(Exception):
    """A run of the session was stopped (Ctrl-C, SIGTERM, SIGHUP): the session stops too."""

    def __init__(self, result: RunResult):
        super().__init__(result.status)
        self.result = result


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


class Session:
    """One adaptive session: its decision trail, the pilot race, the choice and the final run."""

    def __init__(self, spec: Any, tspec: Any, home: Path, holdout: int, display: Any, say: Callable[[str], None]):
        self.spec, self.home, self.holdout, self.display, self.say = spec, home, holdout, display, say
        self.key = session_key(spec)
        self.claim = claim(home, self.key)  # refused here while another executor runs this plan
        self.sid = open_session(home, self.key) or new_session_id(self.key)
        self.trail = trail(home, self.sid)
        self.ctx = context_for(tspec, read_home(tspec, home))
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


    # -- one pilot round ---------------------------------------------------------------
    def _round_plan(self, r: int, alive: list[str], compiled: dict, steps: dict, budget: float) -> dict | None:
        """The steps round ``r`` adds per group, decided once (a ``round`` decision, so a
        resumed session runs the very same graph); None when the pilot budget cannot pay
        the round's start-ups and evals."""
        planned = self._find("round", round=r)
        if planned is not None:
            return planned.evidence["steps"]
        if self._find("prune", round=r, stop=True) is not None:
            return None
        fixed = len(alive) * self._overhead()  # a round's start-ups and evals, as measured
        if r == 0:  # and the untrained models' evals
            fixed += (1 + len({self._teacher(g) for g in alive if g != "student"})) * self._overhead() / 2
        if self._spent() + fixed >= budget:
            self._decide(Decision("prune", f"round {r}: the pilot budget ({budget:.3g} GPU-hours) cannot pay "
                                  f"{'another' if r else 'a'} round ({self._spent():.3g} spent, {fixed:.3g} for "
                                  "its start-ups and evals alone, as this home measured them); no more pilots",
                                  evidence={"round": r, "stop": True}))
            return None
        n = {g: self._steps(r, g, alive, compiled[g], steps[g], budget) for g in alive}
        self._decide(Decision("round", f"round {r}: " + ", ".join(f"{g} +{n[g]} steps" for g in alive),
                              evidence={"round": r, "steps": n, "alive": alive}))
        return n

    def _pilot_round(self, r: int, alive: list[str], compiled: dict, steps: dict, n: dict) -> Decision:
        stages = self._round_stages(r, alive, compiled, steps, n)
        graph = StageGraph.model_validate({
            "plan": self.spec.name, "stages": stages, "cluster": None,
            "meta": {"adaptive": {"session": self.sid, "role": "pilot", "round": r},
                     "structure": f"pilot round {r}: " + ", ".join(f"{g} +{n[g]} steps" for g in alive)}})
        res = execute_graph(graph, self.home, display=self.display)
        self.runs.append(res.run_id)
        if res.status == "KILLED":  # stopped (Ctrl-C, SIGTERM): no decision; the next run resumes the round
            raise SessionStopped(res)
        return self._decide(self._measured(r, alive, compiled, steps, n, res))

    def _steps(self, r: int, g: str, alive: list[str], compiled: list, done: list[int], budget: float) -> int:
        """Steps this round adds to group ``g``: its share of the round's budget at the
        cost per step measured so far (the cost model's before the first round). Not capped
        by the candidate's own steps: a candidate the priors sized small (because they
        expect nothing of it) is exactly one whose response a pilot must measure."""
        first = P._first_stage(compiled, g)
        planned = first["estimated"]["gpu_hours"] / max(int(first["params"]["steps"]), 1)
        per_step = self._measured_per_step(g) or planned
        rounds_left = self.spec.adaptive.rounds - r
        share = (budget - self._spent()) / rounds_left / len(alive) - self._overhead()
        want = int(share / max(per_step, 1e-12))
        return max(self.ctx.min_steps, min(want, MAX_PILOT_STEPS))

    def _measured_per_step(self, g: str) -> float | None:
        """GPU-hours per added step of ``g``'s pilot, start-up excluded (from the pilots so far)."""
        rows = [(d.evidence["stage_hours"].get(g), d.evidence["steps"].get(g)) for d in self.trail
                if d.kind == "pilot" and d.evidence.get("stage_hours")]
        hours = sum(max(h - self._overhead() / 2, 0.0) for h, s in rows if h and s)
        n = sum(s for h, s in rows if h and s)
        return hours / n if n and hours else None

    def _overhead(self) -> float:
        """A pilot's fixed cost per round beyond its steps, measured: its holdout eval (a
        process start-up plus the eval), and as much again for the training stage's start-up."""
        evals = [h for d in self.trail if d.kind == "pilot" for h in (d.evidence.get("eval_hours") or {}).values()]
        if evals:
            return 2 * sum(evals) / len(evals)
        return 2 * self._history_eval_hours()

    def _history_eval_hours(self) -> float:
        """Before any pilot has run: the median eval stage of this home's history (the
        evals it ran of the same size), or 0 when it has none."""
        if self.__dict__.get("_eval_h") is None:
            try:
                _, rows = query("SELECT median(gpu_hours) FROM stages WHERE kind = 'eval' AND status = 'FINISHED'",
                                self.home)
                self._eval_h = float(rows[0][0] or 0.0)
            except Exception:  # no history yet
                self._eval_h = 0.0
        return self._eval_h

    def _round_stages(self, r: int, alive: list[str], compiled: dict, steps: dict, n: dict) -> list[dict]:
        lab = self.spec.data.labeled
        src = {"source": self.spec.resolve_path(lab.source), "problem_field": lab.problem_field,
               "answer_field": lab.answer_field, "split": lab.split}
        offset = lab.size - self.holdout
        template = json.loads(next(s for s in compiled[alive[0]] if s.kind == "eval").model_dump_json())
        out: list[dict] = []
        if r == 0:
            out.append(P.holdout_eval("pilot_ref_student", self._student(), [], template, src, offset, self.holdout))
            for t in dict.fromkeys(self._teacher(g) for g in alive if g != "student"):
                out.append(P.holdout_eval(f"pilot_ref_teacher{list(self.ctx.teachers).index(t)}",
                                          self.spec.resolve_path(t), [], template, src, offset, self.holdout))
        for g in alive:
            chain = P.pilot_stages(compiled[g], g, self._student(), steps[g] + [n[g]])
            out += chain
            out.append(P.holdout_eval(f"pilot_eval_{g}_{r}", "@" + chain[-1]["id"], [chain[-1]["id"]], template,
                                      src, offset, self.holdout))
        return out

    def _teacher(self, g: str) -> str:
        """The teacher a group's pilot involves (the plan's first, or the one its index names)."""
        digits = g[len(P.kind_of(g)):]
        return list(self.ctx.teachers)[int(digits or 0)]

    def _measured(self, r: int, alive: list[str], compiled: dict, steps: dict, n: dict, res: RunResult) -> Decision:
        # a cached stage costs what its producing attempt cost: a re-run session spends (and
        # sizes its next round) as the first did, so it makes the same decisions
        _, rows = query("""SELECT s.stage_id, s.cache_key, coalesce(p.hours, s.gpu_hours, 0), max(m.value)
                           FROM stages s
                           LEFT JOIN (SELECT cache_key, max(gpu_hours) AS hours FROM stages
                                      WHERE status = 'FINISHED' GROUP BY cache_key) p USING (cache_key)
                           LEFT JOIN metrics_latest m ON m.stage_id = s.stage_id
                                AND m.cache_key = s.cache_key AND m.key LIKE 'eval/holdout/avg@%'
                           WHERE s.run_id = ? GROUP BY ALL""", self.home, [res.run_id])
        by = {sid: (key, hours, acc) for sid, key, hours, acc in rows}
        seen = {k for d in self.trail if d.kind == "pilot" for k in d.evidence.get("keys", [])}
        keys = sorted({key for key, _, _ in by.values()} - seen)  # a round pays for what earlier rounds did not
        hours = sum(h for key, h, _ in by.values() if key in keys)
        if res.exit_code:
            return Decision("pilot", f"round {r} failed ({res.status}): choosing on what the pilots measured so far",
                            run_id=res.run_id, evidence={"round": r, "failed": True, "gpu_hours": hours, "keys": keys,
                                                         "errors": list(res.failures)[:3]})
        refs = self._refs(by)
        data, acc, curves = [], {}, {}
        for g in alive:
            acc[g] = by[f"pilot_eval_{g}_{r}"][2]
            chain = P.pilot_stages(compiled[g], g, self._student(), steps[g] + [n[g]])
            total = sum(steps[g]) + n[g]
            data.append(datum_to_json(P.datum(self.ctx, g, self._teacher(g) if g != "student" else None, chain[-1],
                                              total, acc[g], refs, self.holdout)))
            curves[g] = self._curve(g, total, acc[g], refs)
        why = f"round {r}: holdout " + ", ".join(f"{g} {acc[g]:.1%} after {sum(steps[g]) + n[g]} steps" for g in alive)
        why += " (untrained: " + ", ".join(f"{P.short(k)} {v:.1%}" for k, v in refs.items()) + ")"
        return Decision("pilot", why + f"; {hours:.3g} GPU-hours", run_id=res.run_id, evidence={
            "round": r, "steps": n, "accuracy": acc, "refs": refs, "data": data, "curves": curves, "keys": keys,
            "gpu_hours": hours, "stage_hours": {g: by[f"pilot_{g}_{r}"][1] for g in alive},
            "eval_hours": {g: by[f"pilot_eval_{g}_{r}"][1] for g in alive}})

    def _refs(self, by: dict) -> dict[str, float]:
        """Holdout accuracy of the untrained student and teachers (measured in round 0)."""
        refs = P.refs_of(self.trail)
        got = by.get("pilot_ref_student")
        if got and got[2] is not None:
            refs["student"] = got[2]
        for sid, (_, _, acc) in by.items():
            if sid.startswith("pilot_ref_teacher") and acc is not None:
                refs[list(self.ctx.teachers)[int(sid[len("pilot_ref_teacher"):])]] = acc
        return refs

    def _curve(self, g: str, total: int, acc: float, refs: dict) -> dict | None:
        points, cum = [], 0
        for d in self.trail:
            if d.kind == "pilot" and g in d.evidence.get("accuracy", {}):
                cum += d.evidence["steps"][g]
                points.append((cum, d.evidence["accuracy"][g]))
        points.append((total, acc))
        per_step = self._measured_per_step(g)  # at: the steps the plan's whole budget would buy
        at = min(self.ctx.budget / per_step, MAX_PILOT_STEPS) if per_step else 4.0 * total
        base = refs["student"] if P.kind_of(g) in ("student", "bridge") else refs[self._teacher(g)]
        return P.sigmoid_curve(points, base, at)
