"""Outcome model: the final student's accuracy on the objective eval for a candidate pipeline.

It encodes the reward-density principle (DESIGN.md section 1) as a few closed forms and
is calibrated to the paper's numbers (Xu et al. 2026, arXiv 2605.12483) on its own setting
(plans/budget.yaml); ``tests/test_outcome.py`` prints predicted vs reported for each.

How a pipeline turns into accuracy (accuracies are fractions; N = parameters):

1. Per-prompt solve rates p ~ Beta(a, b) with mean = the model's accuracy (registry, a
   size fit over its family when unpublished, or a probe's measurements) and
   concentration ``KAPPA``. With E[p^m (1-p)^n] = B(a+m, b+n)/B(a, b):
   GRPO signal yield = 1 - B(a+G, b)/B(a, b) - B(a, b+G)/B(a, b) (a group of G samples
   teaches only when its outcomes are mixed) and pass@k = 1 - B(a, b+k)/B(a, b).
2. GRPO gain (teacher in Stage 1, student directly or in Stage 3):
   ``eta(N) · readiness · (pass@K_CAP - acc) · (1 - exp(-S / L_RL))`` where S = labels ·
   yield · epoch_gain(epochs) counts the labels that carry signal. Concave in S, capped by
   pass@k (GRPO sharpens toward what the model can already sample; it does not lift pass@k).
   ``eta`` grows with size: exploration is productive on strong models (the principle).
3. Bridge (dense transfer): the student can close a fraction ``rho`` of its gap to the
   teacher's *effective* accuracy; rho shrinks as the capacity gap grows (Mirzadeh et al.
   2020). The effective accuracy is the teacher's accuracy minus ``DELTA_UNSHAPED`` times
   (1 - shapedness), shapedness = 1 - exp(-S_teacher / L_SHAPE): condition C1, a teacher
   that RL has not reward-shaped is a poor dense reward. FKL closes ``F_MAX·sat(rollouts)``
   of the reachable gap; OPD closes ``O_MAX·closeness·sat(rollouts)`` of what remains,
   where closeness (condition C2) is ``C_COLD`` without warmup and rises to 1 with it.
4. Stage 3 is GRPO on the bridged student, whose readiness is ``1 + R_BOOST · progress``
   (progress = fraction of the gap the bridge closed under a shaped teacher): the paper's
   finding that GRPO weak on a cold student becomes effective after the bridge.

    >>> y = signal_yield(0.73, KAPPA, 8)
    >>> 0.2 < y < 0.5
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from s2d_plan.plan.registry import ModelInfo, known_models, model_info

# ---------------------------------------------------------------- constants
# Concentration a+b of the per-prompt solve-rate Beta. MATH-style sets are strongly
# bimodal (most problems always or never solved by a given model); 0.7 gives a U/J shape
# and puts pass@16 of a 73% model at 93.5%, in line with small-model MATH pass@k curves.
KAPPA = 0.7
K_CAP = 16  # pass@k that caps GRPO gains (k of the paper's avg@16 protocol)
STUDENT_REF_B = 1.72  # size (B params) at which ETA_RL is calibrated (the paper's student)
# GRPO efficiency of the reference-size model: fraction of the pass@k headroom reached at
# saturation. Calibrated: direct GRPO on Qwen3-1.7B with 7,500 MATH labels, 73.0 -> 75.9.
ETA_RL = 0.1616
# Size exponent of GRPO efficiency. Chosen so RL lifts Qwen3-8B by ~3 MATH-500 points on
# 7.5k labels (typical of published 7-8B math GRPO runs) while 1.7B gains 2.9 from more
# headroom: larger models explore more productively (the principle's premise).
ETA_SIZE_EXP = 0.45
L_RL = 2000.0  # signal-bearing labels at which GRPO gains reach 63% of their cap
L_SHAPE = 1000.0  # signal-bearing labels to reward-shape a teacher (C1) to 63%
# Effective-accuracy penalty of an unshaped (raw) teacher as a dense reward. Calibrated:
# raw-teacher bridge costs 7.8 MATH points vs the RL teacher (paper's ablation).
DELTA_UNSHAPED = 0.1798
RATIO_REF = 1.72 / 8.19  # student/teacher size ratio of the paper's canonical pair
RHO_REF = 0.5  # reachable fraction of the teacher gap at RATIO_REF (assumed; scale-free with F/O_MAX)
RHO_EXP = 0.25  # capacity-gap exponent (teacher-assistant KD: larger gaps transfer less)
TAU_BRIDGE = 15000.0  # rollouts at which a bridge phase reaches 63% of its effect
# Fraction of the reachable gap FKL alone closes at saturation. Calibrated: FKL-only
# bridge (no OPD) is 3.3 below FKL->OPD = 76.0.
F_MAX = 0.4292
# Fraction of the remaining gap OPD closes at saturation after warmup. Calibrated:
# FKL->OPD from the RL teacher reaches 79.3.
O_MAX = 0.7957
# Closeness (C2) loss per e-fold of teacher/student size without warmup. Calibrated:
# OPD without FKL warmup is 1.7 below FKL->OPD.
K_C = 0.1108
SEQ_KD_EFFICIENCY = 0.85  # sequence-level KD (teacher text) vs token logits (Kim & Rush 2016: close, lower)
REPEAT_VALUE = 0.5  # a rollout on a prompt already seen, relative to a new prompt
# Value of replaying bridge data already trained on. Calibrated: the compute-matched
# replay control gains only 0.3 where Stage 3 gains 3.1 (paper: Stage 3 beats it by 2.8).
REPLAY_VALUE = 0.0513
# Stage 3 readiness boost. Calibrated: Stage 3 lifts the bridged student 75.4 -> 78.5.
R_BOOST = 1.932
# LoRA relative efficiency: matches full FT for RL, trails it on large distillation sets
# (Schulman et al. 2025, "LoRA Without Regret", Thinking Machines).
LORA_RL = 0.95
LORA_KD = 0.85
BAND_FLOOR = 0.01  # half-width of the band with no change predicted
BAND_SLOPE = 0.15  # extra half-width per unit of predicted change (model error grows with extrapolation)
BAND_ESTIMATED = 0.03  # extra when an accuracy is estimated rather than published
DEFAULT_ACCURACY = 0.3  # last resort at STUDENT_REF_B when no model anywhere has a figure for the eval
# Logit of accuracy gained per e-fold of parameters in that last resort: the slope of the
# registry's Qwen3 MATH-500 figures (1.7B -> 14.8B) and Llama MATH figures (~0.5-0.6).
SIZE_LOGIT_SLOPE = 0.55


@dataclass(frozen=True)
class OutcomeConstants:
    """The constants above as one value, so ``s2d-plan calibrate`` can refit some of them
    (``<home>/calibration.json``, key ``"outcome"``, names in lower case)."""

    k_cap: float = K_CAP
    student_ref_b: float = STUDENT_REF_B
    eta_rl: float = ETA_RL
    eta_size_exp: float = ETA_SIZE_EXP
    l_rl: float = L_RL
    l_shape: float = L_SHAPE
    delta_unshaped: float = DELTA_UNSHAPED
    ratio_ref: float = RATIO_REF
    rho_ref: float = RHO_REF
    rho_exp: float = RHO_EXP
    tau_bridge: float = TAU_BRIDGE
    f_max: float = F_MAX
    o_max: float = O_MAX
    k_c: float = K_C
    seq_kd_efficiency: float = SEQ_KD_EFFICIENCY
    repeat_value: float = REPEAT_VALUE
    replay_value: float = REPLAY_VALUE
    r_boost: float = R_BOOST
    lora_rl: float = LORA_RL
    lora_kd: float = LORA_KD
    band_floor: float = BAND_FLOOR
    band_slope: float = BAND_SLOPE
    band_estimated: float = BAND_ESTIMATED


DEFAULT_OUTCOME = OutcomeConstants()


# ---------------------------------------------------------------- Beta closed forms


def _lbeta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _moment(mu: float, kappa: float, m: int, n: int) -> float:
    """E[p^m (1-p)^n] for p ~ Beta(mu·kappa, (1-mu)·kappa)."""
    mu = min(max(mu, 1e-4), 1 - 1e-4)
    a, b = mu * kappa, (1 - mu) * kappa
    return math.exp(_lbeta(a + m, b + n) - _lbeta(a, b))


def signal_yield(mu: float, kappa: float, group: int) -> float:
    """Fraction of prompts whose group of ``group`` samples has mixed outcomes."""
    return max(0.0, 1.0 - _moment(mu, kappa, group, 0) - _moment(mu, kappa, 0, group))


def pass_at_k(mu: float, kappa: float, k: int) -> float:
    return 1.0 - _moment(mu, kappa, 0, k)


@dataclass(frozen=True)
class SolveRates:
    """Per-prompt solve-rate distribution of one model on the labeled data."""

    mean: float
    kappa: float = KAPPA
    source: str = "registry"  # registry | estimated (size fit) | probe (n prompts)
    estimated: bool = False


def rates_from_evidence(rows: list[tuple[int, int]]) -> SolveRates | None:
    """Fit the Beta by moments from probe rows (samples, correct) per prompt, removing
    the binomial sampling noise from the observed variance."""
    rows = [(n, c) for n, c in rows if n > 0]
    if len(rows) < 8:
        return None
    rates = [c / n for n, c in rows]
    mean = sum(rates) / len(rates)
    var = sum((r - mean) ** 2 for r in rates) / (len(rates) - 1)
    noise = sum(mean * (1 - mean) / n for n, _ in rows) / len(rows)
    spread = max(var - noise, 1e-4)
    mean = min(max(mean, 0.005), 0.995)
    kappa = min(max(mean * (1 - mean) / spread - 1, 0.2), 50.0)
    return SolveRates(mean, kappa, f"probe ({len(rows)} prompts)")


def _logit(v: float) -> float:
    v = min(max(v, 0.01), 0.99)
    return math.log(v / (1 - v))


def _from_other_eval(info: ModelInfo, eval_name: str) -> SolveRates | None:
    """The model's figure on another eval, shifted by the mean logit offset between the
    two evals over registry models that publish both (e.g. MATH vs MATH-500)."""
    others = [model_info(n) for n in known_models()]
    for other_eval, acc in info.accuracy.items():
        offsets = [_logit(m.accuracy[eval_name].value) - _logit(m.accuracy[other_eval].value)
                   for m in others if m is not None and eval_name in m.accuracy and other_eval in m.accuracy]
        if offsets:
            z = _logit(acc.value) + sum(offsets) / len(offsets)
            return SolveRates(min(max(1 / (1 + math.exp(-z)), 0.02), 0.97), estimated=True,
                              source=f"estimated: its {other_eval} figure shifted by {len(offsets)} model(s) "
                                     f"publishing both")
    return None


def estimate_accuracy(info: ModelInfo, eval_name: str) -> SolveRates:
    """The model's accuracy on ``eval_name``: published; else its figure on another eval
    shifted by the offset between the two evals; else a logit/log-size fit over known
    models of the same tokenizer family (then over all). Estimates are flagged."""
    known = info.accuracy.get(eval_name)
    if known is not None:
        return SolveRates(known.value, source=known.source)
    transferred = _from_other_eval(info, eval_name)
    if transferred is not None:
        return transferred
    points = []
    for name in known_models():
        other = model_info(name)
        if other is not None and eval_name in other.accuracy:
            points.append((other.tokenizer == info.tokenizer, other.params_b, other.accuracy[eval_name].value))
    family = [(n, v) for same, n, v in points if same]
    pool = family if len(family) >= 2 else [(n, v) for _, n, v in points]
    if len(pool) >= 2:
        # logit-linear in log size: saturates toward 1 instead of overshooting it
        xs = [math.log(n) for n, _ in pool]
        ys = [_logit(v) for _, v in pool]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs) or 1.0
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
        value = 1 / (1 + math.exp(-(my + slope * (math.log(info.params_b) - mx))))
        how = f"estimated: logit/log-size fit over {len(pool)} {'same-family ' if pool is family else ''}models"
    elif len(pool) == 1:
        value, how = pool[0][1], "estimated: the only model with a published figure"
    else:  # nothing to fit: a generic prior that still ranks larger models higher
        z = _logit(DEFAULT_ACCURACY) + SIZE_LOGIT_SLOPE * math.log(info.params_b / STUDENT_REF_B)
        value = 1 / (1 + math.exp(-z))
        how = f"estimated: no published {eval_name} figure anywhere, a size prior"
    return SolveRates(min(max(value, 0.02), 0.97), source=how, estimated=True)


# ---------------------------------------------------------------- the pipeline model


@dataclass(frozen=True)
class Pipeline:
    """The quantities of a candidate allocation that the outcome depends on."""

    teacher: ModelInfo | None = None
    teacher_rates: SolveRates | None = None
    teacher_labels: int = 0  # Stage 1 labels (0: raw teacher)
    teacher_epochs: float = 0.0
    fkl_rollouts: float = 0.0  # teacher rollouts the student warms up on (0: no FKL)
    fkl_token_level: bool = True
    opd_rollouts: float = 0.0  # student rollouts scored by the teacher (0: no OPD)
    student_labels: int = 0  # Stage 3 labels (after a bridge) or direct GRPO labels
    student_epochs: float = 0.0
    group_size: int = 8
    pool: int = 1  # distinct prompts the bridge can draw from
    replay_rollouts: float = 0.0  # bridge continued on already-seen data (replay control)
    lora_teacher: bool = False
    lora_student: bool = False


@dataclass(frozen=True)
class Prediction:
    value: float
    low: float
    high: float
    parts: dict[str, float] = field(default_factory=dict)  # intermediate accuracies, yields


def epoch_gain(epochs: float) -> float:
    """Value of repeated passes over the same labels: 1 at one epoch, saturating at 1.58."""
    return (1 - math.exp(-max(epochs, 0.0))) / (1 - math.exp(-1))


def rl_gain(mu: float, kappa: float, params_b: float, labels: float, epochs: float, group: int,
            readiness: float = 1.0, k: OutcomeConstants = DEFAULT_OUTCOME) -> tuple[float, float]:
    """(accuracy gain, signal-bearing labels) of GRPO on a model at accuracy ``mu``."""
    if labels <= 0 or epochs <= 0:
        return 0.0, 0.0
    signal = labels * signal_yield(mu, kappa, group) * epoch_gain(epochs)
    eta = min(1.0, k.eta_rl * (params_b / k.student_ref_b) ** k.eta_size_exp * readiness)
    headroom = max(pass_at_k(mu, kappa, k.k_cap) - mu, 0.0)
    return eta * headroom * (1 - math.exp(-signal / k.l_rl)), signal


def _sat(x: float, k: OutcomeConstants) -> float:
    return 1 - math.exp(-max(x, 0.0) / k.tau_bridge)


def _distinct(rollouts: float, pool: int, k: OutcomeConstants) -> float:
    seen = min(rollouts, max(pool, 1))
    return seen + k.repeat_value * (rollouts - seen)


def capacity_fraction(student: ModelInfo, teacher: ModelInfo, k: OutcomeConstants = DEFAULT_OUTCOME) -> float:
    ratio = student.params_b / teacher.params_b
    return min(0.95, k.rho_ref * (ratio / k.ratio_ref) ** k.rho_exp)


def predict(student: ModelInfo, rates: SolveRates, p: Pipeline, k: OutcomeConstants = DEFAULT_OUTCOME) -> Prediction:
    """Predicted objective accuracy of the final student, with a band.

    >>> from s2d_plan.plan.registry import model_info
    >>> s = model_info("Qwen/Qwen3-1.7B")
    >>> round(predict(s, SolveRates(0.73), Pipeline(student_labels=7500, student_epochs=2)).value, 3)
    0.759
    """
    s0, kappa = rates.mean, rates.kappa
    parts: dict[str, float] = {"base": s0}
    acc, progress = s0, 0.0
    bridged = p.teacher is not None and (p.fkl_rollouts > 0 or p.opd_rollouts > 0)
    if bridged:
        t = p.teacher
        tr = p.teacher_rates or SolveRates(0.5)
        gain, signal = rl_gain(tr.mean, tr.kappa, t.params_b, p.teacher_labels, p.teacher_epochs, p.group_size, k=k)
        gain *= k.lora_rl if p.lora_teacher else 1.0
        shaped = 1 - math.exp(-signal / k.l_shape)
        teacher_acc = min(tr.mean + gain, 0.995)
        target = teacher_acc - k.delta_unshaped * (1 - shaped)
        reach = capacity_fraction(student, t, k) * (target - s0)
        kd = k.lora_kd if p.lora_student else 1.0
        x_f = 0.0
        if p.fkl_rollouts > 0:
            level = 1.0 if p.fkl_token_level else k.seq_kd_efficiency
            x_f = k.f_max * kd * level * _sat(_distinct(p.fkl_rollouts, p.pool, k), k)
        x_o = 0.0
        if p.opd_rollouts > 0 or p.replay_rollouts > 0:
            cold = min(1.0, max(0.3, 1 - k.k_c * math.log(t.params_b / student.params_b)))
            closeness = cold + (1 - cold) * (x_f / k.f_max)
            amount = _distinct(p.opd_rollouts, p.pool, k) + k.replay_value * p.replay_rollouts
            x_o = k.o_max * kd * closeness * _sat(amount, k)
        phi = 1 - (1 - x_f) * (1 - x_o)
        acc = s0 + phi * reach
        progress = phi * shaped
        parts.update(teacher=teacher_acc, teacher_signal=signal, shaped=shaped, bridged=acc)
    if p.student_labels > 0 and p.student_epochs > 0:
        readiness = 1 + k.r_boost * progress
        gain, signal = rl_gain(acc, kappa, student.params_b, p.student_labels, p.student_epochs,
                               p.group_size, readiness, k)
        acc += gain * (k.lora_rl if p.lora_student else 1.0)
        parts.update(student_signal=signal)
    acc = min(max(acc, 0.0), 1.0)
    half = k.band_floor + k.band_slope * abs(acc - s0)
    if rates.estimated or (p.teacher_rates is not None and p.teacher_rates.estimated and bridged):
        half += k.band_estimated
    if rates.source.startswith("probe"):
        half *= 0.6
    return Prediction(acc, max(acc - half, 0.0), min(acc + half, 1.0), parts)


# ---------------------------------------------------------------- the paper's setting

# The paper does not publish its step counts; these are the quantities we take as "its
# setting" on plans/budget.yaml (G=8, two epochs over the labels, one teacher rollout and
# one OPD rollout per pool prompt). The Stage 3 experiment holds half the labels out of
# Stage 1 and runs a shorter bridge, sized so the bridged student is at 75.4 as reported.
PAPER_EPOCHS = 2.0
PAPER_GROUP = 8
PAPER_STAGE3_BRIDGE_ROLLOUTS = 9250


def paper_cases(student: ModelInfo, teacher: ModelInfo, labels: int, pool: int) -> dict[str, tuple[Pipeline, float]]:
    """Named pipelines of the paper's experiments with the accuracy it reports for each
    (MATH-500, fraction). Used by the calibration test and ``recommend``'s self-check."""
    rt = estimate_accuracy(teacher, "math500")
    common = dict(teacher=teacher, teacher_rates=rt, teacher_epochs=PAPER_EPOCHS, group_size=PAPER_GROUP, pool=pool)
    full = dict(common, teacher_labels=labels, fkl_rollouts=pool, opd_rollouts=pool)
    half = labels // 2
    short = dict(common, teacher_labels=labels - half, fkl_rollouts=PAPER_STAGE3_BRIDGE_ROLLOUTS,
                 opd_rollouts=PAPER_STAGE3_BRIDGE_ROLLOUTS)
    matched = half * PAPER_EPOCHS * PAPER_GROUP  # student rollouts Stage 3 spends
    return {
        "direct GRPO": (Pipeline(student_labels=labels, student_epochs=PAPER_EPOCHS, group_size=PAPER_GROUP), 0.759),
        "RL-teacher bridge (FKL->OPD)": (Pipeline(**full), 0.793),
        "raw teacher (-7.8)": (Pipeline(**dict(full, teacher_labels=0)), 0.793 - 0.078),
        "no FKL warmup (-1.7)": (Pipeline(**dict(full, fkl_rollouts=0)), 0.793 - 0.017),
        "no OPD (-3.3)": (Pipeline(**dict(full, opd_rollouts=0)), 0.793 - 0.033),
        "Stage 3: bridged student": (Pipeline(**short), 0.754),
        "Stage 3: after GRPO": (Pipeline(**short, student_labels=half, student_epochs=PAPER_EPOCHS), 0.785),
        "Stage 3: replay control (-2.8)": (Pipeline(**short, replay_rollouts=matched), 0.785 - 0.028),
    }
