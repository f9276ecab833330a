"""One pilot round of an adaptive session: how many steps each pilot adds, the round's
graph (pilots continuing their checkpoints, evals on the held-out labels), and what it
measured, as the ``pilot`` decision. Mixed into ``session.Session``."""

from __future__ import annotations

import json

from s2d_plan.adaptive import pilots as P
from s2d_plan.graph import StageGraph
from s2d_plan.history.decisions import Decision
from s2d_plan.history.read import query
from s2d_plan.predict.posterior import datum_to_json
from s2d_plan.run.executor import RunResult, execute_graph

MAX_PILOT_STEPS = 10_000


class SessionStopped(Exception):
    """A run of the session was stopped (Ctrl-C, SIGTERM, SIGHUP): the session stops too."""

    def __init__(self, result: RunResult):
        super().__init__(result.status)
        self.result = result


class PilotRounds:
    """Needs the session's ``spec``, ``ctx``, ``home``, ``sid``, ``holdout``, ``trail``,
    ``runs``, ``display``, ``say``, ``_decide``, ``_spent``, ``_student``."""

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
