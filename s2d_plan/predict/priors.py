"""Every outcome-model constant with its prior: the one place they are declared.

A prior is a normal on the constant (or on its log, for amounts) whose central 95% is
``[lo, hi]``; ``center`` is the most plausible value before any evidence. ``source``
says where the range comes from; ``assumed`` marks ranges that are our judgement rather
than a published figure. The posterior (``s2d_plan.predict.posterior``) combines these
with the evidence; ``recommend`` reports a choice that flips inside the range of an
assumed constant the evidence has not narrowed.

The shipped point values (``DEFAULT_OUTCOME``) are the prior centers: a prediction made
without a posterior is a prior guess, never a fit.

    >>> PRIORS["rl_ceiling"].assumed, DEFAULT_OUTCOME.rl_ceiling == PRIORS["rl_ceiling"].center
    (True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, make_dataclass


@dataclass(frozen=True)
class Prior:
    center: float
    lo: float  # central 95% of the prior
    hi: float
    log: bool  # normal on log(value) (amounts) instead of value
    source: str
    assumed: bool = True
    floor: float = 0.0  # physical limits the value never crosses (fractions stay in [0, 1])
    ceil: float = math.inf

    def to_x(self, v: float) -> float:
        return math.log(max(v, 1e-12)) if self.log else v

    def from_x(self, x: float) -> float:
        return min(max(math.exp(x) if self.log else x, self.floor), self.ceil)

    @property
    def mean_x(self) -> float:
        return self.to_x(self.center)

    @property
    def sd_x(self) -> float:
        return (self.to_x(self.hi) - self.to_x(self.lo)) / 4

    def bounds_x(self) -> tuple[float, float]:
        """Hard bounds of the search: the 95% range widened by one sd, within physics."""
        lo, hi = self.to_x(self.lo) - self.sd_x, self.to_x(self.hi) + self.sd_x
        if not self.log:
            lo, hi = max(lo, self.floor), min(hi, self.ceil)
        return lo, hi


_SCALERL = "ScaleRL (arXiv 2510.13786): RL reward vs compute is a saturating sigmoid; recipes move speed more than ceiling"
_PAPER = "Xu et al. 2026 (arXiv 2605.12483)"

PRIORS: dict[str, Prior] = {
    # GRPO: gain = ceiling x (pass@k - acc) x (1 - exp(-signal x eff / l_rl))
    "rl_ceiling": Prior(0.5, 0.15, 0.9, False, f"fraction of the pass@16 headroom GRPO reaches at saturation; "
                        f"{_SCALERL}", floor=0.01, ceil=1.0),
    "l_rl": Prior(8000.0, 1000.0, 60000.0, True, "signal-bearing labels to 63% of the ceiling at the reference "
                  "size (small-model math GRPO runs gain most of their lift within a few thousand prompts)"),
    "eta_size_exp": Prior(0.4, 0.0, 1.0, False, "efficiency grows with size (the principle: exploration is "
                          "productive on strong models)", floor=-0.5, ceil=2.0),
    "l_shape": Prior(1500.0, 200.0, 15000.0, True, "signal-bearing labels that reward-shape a teacher (C1) to 63%"),
    # dense transfer
    "delta_unshaped": Prior(0.12, 0.0, 0.3, False, f"effective-accuracy penalty of a raw teacher as dense reward; "
                            f"{_PAPER} raw-teacher ablation (-7.8) and the Qwen3 report (its small models are "
                            "already distilled from larger Qwen3 models)", floor=0.0, ceil=0.6),
    "rho_ref": Prior(0.5, 0.2, 0.9, False, "reachable fraction of the teacher gap at the paper's size ratio",
                     floor=0.02, ceil=0.98),
    "rho_exp": Prior(0.25, 0.0, 0.6, False, "capacity-gap exponent (Mirzadeh et al. 2020, teacher assistants: "
                     "larger gaps transfer less)", floor=0.0, ceil=1.5),
    "tau_bridge": Prior(15000.0, 2000.0, 100000.0, True, "rollouts at which a bridge phase reaches 63% of its "
                        "effect (tinker-cookbook: OPD reaches most of its gain in ~200 steps of 64-128 prompts)"),
    "f_max": Prior(0.45, 0.1, 0.85, False, "fraction of the reachable gap forward-KL alone closes", floor=0.0,
                   ceil=1.0),
    "o_max": Prior(0.65, 0.25, 0.95, False, "fraction of the remaining gap OPD closes after warmup", floor=0.0,
                   ceil=1.0),
    "k_c": Prior(0.12, 0.0, 0.35, False, "closeness (C2) lost per e-fold of teacher/student size without warmup",
                 floor=0.0, ceil=0.7),
    "seq_kd_efficiency": Prior(0.85, 0.65, 1.0, False, "sequence-level KD vs token logits (Kim & Rush 2016: "
                               "close, lower)", assumed=False, floor=0.3, ceil=1.0),
    "repeat_value": Prior(0.5, 0.2, 0.85, False, "a rollout on an already-seen prompt vs a new prompt",
                          floor=0.0, ceil=1.0),
    "replay_value": Prior(0.15, 0.0, 0.5, False, "value of replaying bridge data already trained on", floor=0.0,
                          ceil=1.0),
    "r_boost": Prior(1.5, 0.0, 4.0, False, f"Stage 3 efficiency boost after a bridge ({_PAPER}: GRPO weak on a "
                     "cold student becomes effective after it)", floor=0.0, ceil=10.0),
    "lora_rl": Prior(0.95, 0.85, 1.0, False, "LoRA vs full fine-tuning for RL (Schulman et al. 2025, LoRA "
                     "Without Regret: matches)", assumed=False, floor=0.5, ceil=1.0),
    "lora_kd": Prior(0.85, 0.7, 1.0, False, "LoRA vs full fine-tuning on large distillation sets (same source: "
                     "trails)", assumed=False, floor=0.5, ceil=1.0),
    "l_need": Prior(400.0, 120.0, 1500.0, True, "completion tokens a non-thinking MATH solution needs (63% of "
                    "solutions fit); shorter generations truncate training signal"),
    # how far the closed forms themselves are from the truth (model discrepancy), accuracy units
    "sigma_model": Prior(0.012, 0.003, 0.05, True, "model discrepancy: error of the closed forms beyond seed noise"),
}

# Noise of the evidence (accuracy units) and of the model inputs (logit units).
SEED_SD = 0.0075  # seed-to-seed spread of one run's final eval (0.5-1 point on MATH-500)
PUBLISHED_LOGIT_SD = 0.15  # a published figure vs this plan's eval protocol (prompting, sampling, grader)
ESTIMATED_LOGIT_SD = 0.6  # a figure estimated from other evals or a size fit: wide, flagged
PROBE_LOGIT_SD = 0.08  # measured by a probe on this plan's own labels

OutcomeConstants = make_dataclass(
    "OutcomeConstants", [(name, float, p.center) for name, p in PRIORS.items()] + [("k_cap", float, 16.0),
                                                                                   ("student_ref_b", float, 1.72),
                                                                                   ("ratio_ref", float, 1.72 / 8.19)],
    frozen=True)
OutcomeConstants.__doc__ = ("The outcome model's constants as one value (fields: PRIORS' names plus the fixed "
                            "k_cap, student_ref_b, ratio_ref).")
OutcomeConstants.__module__ = __name__
DEFAULT_OUTCOME = OutcomeConstants()
