"""The posterior over the outcome model's constants, and predictive distributions from it.

Prior: ``s2d_plan.predict.priors`` (a normal per constant, on the log scale for amounts).
Likelihood: every datum is an accuracy measured with noise, ``measured ~ N(predict(θ),
sd² + sigma_model²)``: ``sd`` is the datum's own noise (seed-to-seed spread; plus the
eval's binomial noise for a run in the history, from its sample size) and
``sigma_model`` is the closed forms' own error (a constant with a prior, set by maximum
likelihood given the others). The data are the paper's eight MATH-500 numbers
(``paper_evidence``) and every finished run that ``s2d-plan calibrate`` stored.

Inference: the posterior mode by bounded nonlinear least squares (scipy) on the prior-
and noise-weighted residuals, and a Gaussian around it (Laplace, with the Gauss-Newton
precision JᵀJ) that starts the walkers of an affine-invariant ensemble sampler (emcee),
which then samples the posterior itself, ``sigma_model`` included: the closed forms are
too nonlinear for the Gaussian alone (its draws predict the paper's bridge 1.5 points
low). Where the data say nothing about a constant, its posterior is its prior; where
they pin a combination, only that combination narrows.
Nothing here reads or writes a file: ``fitted`` keeps each posterior for the process,
keyed by a hash of the priors and the evidence (``evidence_key``), and the home's cache
of them (``<home>/posterior/<key>.json``, so a warm ``recommend`` does not refit) is the
evidence edge's (``s2d_plan.evidence.posterior_cache``).

Predictions draw constants from the posterior and the models' accuracies from their own
uncertainty (a published figure, a probe, or a flagged estimate: wide), and add seed noise
and the model's error: ``predictive`` returns draws whose median and 10/90% quantiles are
the 80% interval.

    >>> post = fit(paper_evidence())
    >>> post.info["data"], 0 < post.sigma_model < 0.05
    (8, True)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from s2d_plan.plan.registry import ModelInfo, model_info
from s2d_plan.predict.outcome import Pipeline, SolveRates, estimate_accuracy, paper_cases, predict
from s2d_plan.predict.priors import (
    DEFAULT_OUTCOME,
    ESTIMATED_LOGIT_SD,
    PRIORS,
    PROBE_LOGIT_SD,
    PUBLISHED_LOGIT_SD,
    SEED_SD,
    OutcomeConstants,
)

MODEL_VERSION = "outcome-3"  # bump when the closed forms change: cached posteriors are then refitted
DRAWS = 200  # predictive draws: quantiles to ~1/4 point, P(best) to ~3%

Progress = Callable[[int, int], None]  # (step done, steps) of a long fit


# ---------------------------------------------------------------- evidence


@dataclass(frozen=True)
class Datum:
    name: str
    student: ModelInfo
    rates: SolveRates
    pipeline: Pipeline
    measured: float
    sd: float  # the measurement's own noise (accuracy units)
    source: str


def outcome_inputs(student: ModelInfo, rates: SolveRates, p: Pipeline) -> dict[str, Any]:
    """The inputs of one ``predict`` call as JSON (a graph's ``meta["outcome_inputs"]``)."""
    pipe = {f.name: getattr(p, f.name) for f in dataclasses.fields(Pipeline)
            if f.name not in ("teacher", "teacher_rates")}
    return {"student": _model(student), "rates": _rates(rates), "pipeline": pipe,
            "teacher": _model(p.teacher) if p.teacher else None,
            "teacher_rates": _rates(p.teacher_rates) if p.teacher_rates else None}


def _model(m: ModelInfo) -> dict[str, Any]:
    return m.model_dump(mode="json", exclude={"accuracy"})


def _rates(r: SolveRates) -> dict[str, Any]:
    return {"mean": r.mean, "kappa": r.kappa, "source": r.source, "estimated": r.estimated}


def inputs_from_meta(d: dict[str, Any]) -> tuple[ModelInfo, SolveRates, Pipeline]:
    teacher = ModelInfo(**d["teacher"]) if d.get("teacher") else None
    trates = SolveRates(**d["teacher_rates"]) if d.get("teacher_rates") else None
    known = {f.name for f in dataclasses.fields(Pipeline)}
    pipe = {k: v for k, v in d["pipeline"].items() if k in known}
    return ModelInfo(**d["student"]), SolveRates(**d["rates"]), Pipeline(teacher=teacher, teacher_rates=trates, **pipe)


def paper_evidence() -> list[Datum]:
    """The paper's eight MATH-500 numbers on its setting (plans/budget.yaml), seed noise each."""
    student, teacher = model_info("Qwen/Qwen3-1.7B"), model_info("Qwen/Qwen3-8B")
    rates = estimate_accuracy(student, "math500")
    return [Datum(f"paper: {name}", student, rates, pipe, reported, SEED_SD, "Xu et al. 2026, arXiv 2605.12483")
            for name, (pipe, reported) in paper_cases(student, teacher, labels=7500, pool=40000).items()]


def datum_to_json(d: Datum) -> dict[str, Any]:
    return {"name": d.name, "measured": d.measured, "sd": d.sd, "source": d.source,
            "inputs": outcome_inputs(d.student, d.rates, d.pipeline)}


def datum_from_json(raw: dict[str, Any]) -> Datum:
    student, rates, pipe = inputs_from_meta(raw["inputs"])
    return Datum(str(raw["name"]), student, rates, pipe, float(raw["measured"]), float(raw["sd"]),
                 str(raw.get("source", "history")))


def eval_sd(measured: float, problems: int | None) -> float:
    """Noise of one run's final eval: seed-to-seed spread plus the eval set's binomial noise."""
    n = max(problems or 0, 0)
    binom = measured * (1 - measured) / n if n else 0.0
    return math.sqrt(SEED_SD ** 2 + binom)


# ---------------------------------------------------------------- the posterior


@dataclass(frozen=True)
class Posterior:
    names: tuple[str, ...]  # free constants (the rest: ``base``)
    mean_x: tuple[float, ...]  # the mode, on each prior's scale (log for amounts)
    cov_x: tuple[tuple[float, ...], ...]
    sigma_model: float
    base: OutcomeConstants
    info: dict[str, Any]
    samples_x: tuple[tuple[float, ...], ...] = ()  # MCMC draws (free constants, then log sigma_model)

    def constants(self, x: Sequence[float] | None = None) -> OutcomeConstants:
        x = self.mean_x if x is None else x
        return replace(self.base, sigma_model=self.sigma_model,
                       **{n: PRIORS[n].from_x(float(v)) for n, v in zip(self.names, x)})

    @functools.cached_property
    def mode(self) -> OutcomeConstants:
        return self.constants()

    def sd(self, name: str) -> float:
        """Posterior sd of ``name`` on its prior's scale (its prior sd when pinned or not free)."""
        if name not in self.names:
            return 0.0
        i = self.names.index(name)
        return math.sqrt(max(self.cov_x[i][i], 0.0))

    def narrowed(self, name: str) -> float:
        """Posterior sd over prior sd: ~1 when the evidence says nothing about ``name``."""
        return self.sd(name) / PRIORS[name].sd_x if name in self.names else 0.0

    def interval(self, name: str, z: float = 1.2816) -> tuple[float, float]:
        """The posterior 80% range of a constant, in its own units."""
        if name not in self.names:
            v = getattr(self.base, name)
            return v, v
        i = self.names.index(name)
        m, s = self.mean_x[i], self.sd(name)
        return PRIORS[name].from_x(m - z * s), PRIORS[name].from_x(m + z * s)

    def draws(self, n: int = DRAWS, seed: int = 0) -> list[OutcomeConstants]:
        """``n`` posterior draws of the constants (the sampler's, else the Laplace Gaussian's)."""
        memo = self.__dict__.setdefault("_draw_memo", {})  # frozen: memoized beside the fields
        if (n, seed) not in memo:
            memo[(n, seed)] = self._draws(n, seed)
        return memo[(n, seed)]

    def _draws(self, n: int, seed: int) -> list[OutcomeConstants]:
        rng = np.random.default_rng(seed)
        if self.samples_x:
            pick = rng.choice(len(self.samples_x), size=n, replace=len(self.samples_x) < n)
            m = len(self.names)
            return [replace(self.constants(self.samples_x[i][:m]), sigma_model=math.exp(self.samples_x[i][m]))
                    for i in pick]
        mean, cov = np.array(self.mean_x), np.array(self.cov_x)
        vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
        root = vecs * np.sqrt(np.clip(vals, 0, None))
        xs = mean + rng.standard_normal((n, len(mean))) @ root.T
        lo, hi = zip(*[PRIORS[name].bounds_x() for name in self.names])
        xs = np.clip(xs, lo, hi)
        return [self.constants(x) for x in xs]


def _free(pins: dict[str, float]) -> tuple[str, ...]:
    return tuple(n for n in PRIORS if n != "sigma_model" and n not in pins)


def fit(evidence: list[Datum], pins: dict[str, float] | None = None, progress: Progress | None = None) -> Posterior:
    """Laplace fit of the posterior given ``evidence``, then emcee from it (``pins`` fix
    constants; ``progress(step, steps)`` is called after each sampler step)."""
    from scipy.optimize import least_squares, minimize_scalar

    pins = dict(pins or {})
    base = replace(DEFAULT_OUTCOME, **pins)
    names = _free(pins)
    pri = [PRIORS[n] for n in names]
    x0 = np.array([p.mean_x for p in pri])
    prior_sd = np.array([p.sd_x for p in pri])
    lo, hi = (np.array(v) for v in zip(*[p.bounds_x() for p in pri]))
    y = np.array([d.measured for d in evidence])
    sd = np.array([d.sd for d in evidence])

    def preds(x) -> np.ndarray:
        k = replace(base, **{n: p.from_x(float(v)) for n, p, v in zip(names, pri, x)})
        return np.array([predict(d.student, d.rates, d.pipeline, k).value for d in evidence])

    def residuals(x, sigma):
        return np.concatenate([(preds(x) - y) / np.sqrt(sd ** 2 + sigma ** 2), (x - x0) / prior_sd])

    sp = PRIORS["sigma_model"]
    sigma = base.sigma_model if "sigma_model" in pins else sp.center
    x, res = x0.copy(), None
    for _ in range(3 if "sigma_model" not in pins and evidence else 1):
        res = least_squares(residuals, np.clip(x, lo, hi), bounds=(lo, hi), args=(sigma,), method="trf",
                            x_scale=prior_sd, max_nfev=200 * len(names))
        x = res.x
        if "sigma_model" in pins or not evidence:
            break
        err = preds(x) - y

        def nll(ls: float, err: np.ndarray = err) -> float:  # the profile of sigma_model, its prior included
            var = sd ** 2 + math.exp(ls) ** 2
            return 0.5 * float(np.sum(err ** 2 / var + np.log(var))) + 0.5 * ((ls - sp.mean_x) / sp.sd_x) ** 2

        sigma = math.exp(minimize_scalar(nll, bounds=sp.bounds_x(), method="bounded").x)
    jac = np.asarray(res.jac)
    cov = np.linalg.pinv(jac.T @ jac)
    err = preds(x) - y if evidence else np.zeros(0)
    info = {"data": len(evidence), "rmse": float(np.sqrt(np.mean(err ** 2))) if len(err) else None,
            "free": len(names), "pinned": sorted(pins), "model": MODEL_VERSION}
    samples = _sample(preds, x, cov, sigma, y, sd, x0, prior_sd, lo, hi, "sigma_model" not in pins, info, progress)
    if samples is not None:
        cov = np.cov(samples[:, :len(names)].T)
        sigma = float(np.exp(np.median(samples[:, -1])))
    return Posterior(names, tuple(float(v) for v in x), tuple(tuple(float(c) for c in row) for row in cov),
                     float(sigma), base, info, tuple(tuple(float(v) for v in row) for row in samples)
                     if samples is not None else ())


WALKERS, STEPS, BURN = 48, 200, 100  # ~9,600 likelihood evaluations; acceptance and tau in info


def _sample(preds, x, cov, sigma, y, sd, x0, prior_sd, lo, hi, free_sigma: bool, info: dict,
            progress: Progress | None = None) -> np.ndarray | None:
    """emcee from Laplace-drawn walkers; None without evidence (the prior is then Gaussian)."""
    if not len(y):
        return None
    import emcee

    sp = PRIORS["sigma_model"]
    s_lo, s_hi = sp.bounds_x() if free_sigma else (math.log(sigma) - 1e-9, math.log(sigma) + 1e-9)
    lo_all, hi_all = np.append(lo, s_lo), np.append(hi, s_hi)

    def log_post(theta: np.ndarray) -> float:
        if np.any(theta < lo_all) or np.any(theta > hi_all):
            return -np.inf
        xs, ls = theta[:-1], theta[-1]
        var = sd ** 2 + math.exp(2 * ls)
        err = preds(xs) - y
        lp = -0.5 * float(np.sum((xs - x0) ** 2 / prior_sd ** 2))
        if free_sigma:
            lp -= 0.5 * ((ls - sp.mean_x) / sp.sd_x) ** 2
        return lp - 0.5 * float(np.sum(err ** 2 / var + np.log(var)))

    rng = np.random.default_rng(0)
    dim = len(x) + 1
    start = rng.multivariate_normal(x, (cov + cov.T) / 2, size=WALKERS, method="eigh")
    start = np.clip(start, lo + 1e-9, hi - 1e-9)
    s0 = np.clip(math.log(sigma) + rng.normal(0, 0.05, WALKERS), s_lo, s_hi) if free_sigma else \
        np.full(WALKERS, math.log(sigma))
    sampler = emcee.EnsembleSampler(WALKERS, dim, log_post, moves=[(emcee.moves.DEMove(), 0.8),
                                                                  (emcee.moves.DESnookerMove(), 0.2)])
    sampler.random_state = np.random.RandomState(0).get_state()  # seeded: the same evidence, the same draws
    # run_mcmc is this loop: iterating it ourselves reports progress with the same draws
    for step, _ in enumerate(sampler.sample(np.column_stack([start, s0]), iterations=STEPS), 1):
        if progress is not None:
            progress(step, STEPS)
    chain = sampler.get_chain(discard=BURN, flat=True)
    info["sampler"] = {"library": f"emcee {emcee.__version__}", "walkers": WALKERS, "steps": STEPS, "burn": BURN,
                       "acceptance": round(float(np.mean(sampler.acceptance_fraction)), 3)}
    return chain


# ---------------------------------------------------------------- the key and the memo


def evidence_key(evidence: list[Datum], pins: dict[str, float] | None = None) -> str:
    doc = {"model": MODEL_VERSION, "pins": pins or {}, "seed_sd": SEED_SD, "sampler": [WALKERS, STEPS, BURN],
           "priors": {n: [p.center, p.lo, p.hi, p.log, p.floor, p.ceil] for n, p in PRIORS.items()},
           "evidence": [datum_to_json(d) for d in evidence]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]


_MEMO: dict[str, Posterior] = {}


def fitted(evidence: list[Datum], pins: dict[str, float] | None = None,
           progress: Progress | None = None) -> Posterior:
    """The posterior for ``evidence``, fitted once per process (``evidence_key`` names it;
    the home's file cache is ``s2d_plan.evidence.posterior_cache``)."""
    key = evidence_key(evidence, pins)
    if key not in _MEMO:
        post = fit(evidence, pins, progress)
        post.info["key"] = key
        _MEMO[key] = post
    return _MEMO[key]


def remember(key: str, post: Posterior) -> None:
    """Keep a posterior read from a cache for the rest of this process."""
    _MEMO[key] = post


def memoized(key: str) -> Posterior | None:
    return _MEMO.get(key)


# ---------------------------------------------------------------- predictions


def input_sd(rates: SolveRates) -> float:
    """Logit-scale uncertainty of a model's accuracy: probe < published < estimated."""
    if rates.source.startswith("probe"):
        return PROBE_LOGIT_SD
    return ESTIMATED_LOGIT_SD if rates.estimated else PUBLISHED_LOGIT_SD


def _shift(rates: SolveRates, z: float) -> SolveRates:
    m = min(max(rates.mean, 1e-3), 1 - 1e-3)
    v = 1 / (1 + math.exp(-(math.log(m / (1 - m)) + z)))
    return replace(rates, mean=min(max(v, 0.005), 0.995))


def predictive(post: Posterior, student: ModelInfo, rates: SolveRates, pipelines: Sequence[Pipeline],
               n: int = DRAWS, seed: int = 0, fix: dict[str, float] | None = None,
               inputs: bool = True) -> np.ndarray:
    """Draws (n x candidates) of each pipeline's measured accuracy: constants from the
    posterior (``fix`` holds some at given values), each model's accuracy from its own
    uncertainty (shared by every candidate, so comparisons are paired), and the noise of
    one run (seed spread and model error). ``inputs=False``: constants only, no noise."""
    rng = np.random.default_rng(seed + 1)
    ks = post.draws(n, seed)
    if fix:
        ks = [replace(k, **fix) for k in ks]
    teachers = {p.teacher.name: p.teacher_rates for p in pipelines if p.teacher is not None and p.teacher_rates}
    z_s = rng.standard_normal(n) * input_sd(rates) * inputs
    z_t = {t: rng.standard_normal(n) * input_sd(r) * inputs for t, r in teachers.items()}
    scale = np.array([math.sqrt(SEED_SD ** 2 + k.sigma_model ** 2) for k in ks])[:, None]
    noise = rng.standard_normal((n, len(pipelines))) * scale * inputs
    out = np.empty((n, len(pipelines)))
    for i, k in enumerate(ks):
        r = _shift(rates, float(z_s[i])) if inputs else rates
        shifted = {t: (_shift(tr, float(z_t[t][i])) if inputs else tr) for t, tr in teachers.items()}
        for j, p in enumerate(pipelines):
            tr = shifted.get(p.teacher.name) if p.teacher is not None else None
            out[i, j] = predict(student, r, p, k, tr).value
    return np.clip(out + noise, 0.0, 1.0)


def summarize(draws: np.ndarray) -> dict[str, np.ndarray]:
    """Median, mean, 10% and 90% quantiles of each column."""
    q10, q50, q90 = np.quantile(draws, [0.1, 0.5, 0.9], axis=0)
    return {"median": q50, "mean": draws.mean(axis=0), "low": q10, "high": q90}


def default_posterior() -> Posterior:
    """The shipped posterior: the priors updated by the paper's numbers alone."""
    return fitted(paper_evidence())
