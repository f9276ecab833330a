"""Outcome model: closed forms, shape of the gains, and the calibration to the paper."""

import random

import pytest

from s2d_plan.predict import outcome as o
from s2d_plan.predict.calibration import load_calibration
from s2d_plan.plan.registry import model_info

STUDENT, TEACHER = model_info("Qwen/Qwen3-1.7B"), model_info("Qwen/Qwen3-8B")
TOLERANCE = 0.5  # MATH points; the fit is exact up to rounding of the constants (~0.01)


def test_calibration_reproduces_the_paper(capsys):
    rates = o.estimate_accuracy(STUDENT, "math500")
    rows = []
    for name, (pipeline, reported) in o.paper_cases(STUDENT, TEACHER, labels=7500, pool=40000).items():
        predicted = o.predict(STUDENT, rates, pipeline).value
        rows.append((name, predicted * 100, reported * 100))
    with capsys.disabled():
        print("\n  calibration on plans/budget.yaml (MATH-500, %)")
        print(f"  {'experiment':34s} {'predicted':>9s} {'reported':>9s} {'diff':>6s}")
        for name, p, r in rows:
            print(f"  {name:34s} {p:9.2f} {r:9.2f} {p - r:+6.2f}")
    for name, p, r in rows:
        assert abs(p - r) <= TOLERANCE, name
    by = {n: p for n, p, _ in rows}
    assert by["Stage 3: after GRPO"] - by["Stage 3: replay control (-2.8)"] == pytest.approx(2.8, abs=TOLERANCE)


def _beta_sample(mu, kappa, rng):
    return rng.betavariate(mu * kappa, (1 - mu) * kappa)


@pytest.mark.parametrize("mu", [0.2, 0.73, 0.9])
def test_closed_forms_match_simulation(mu):
    rng = random.Random(0)
    ps = [_beta_sample(mu, o.KAPPA, rng) for _ in range(40000)]
    G, k = 8, 16
    sim_yield = sum(1 - p**G - (1 - p) ** G for p in ps) / len(ps)
    sim_pass = sum(1 - (1 - p) ** k for p in ps) / len(ps)
    assert o.signal_yield(mu, o.KAPPA, G) == pytest.approx(sim_yield, abs=0.01)
    assert o.pass_at_k(mu, o.KAPPA, k) == pytest.approx(sim_pass, abs=0.01)


def test_rl_gains_are_concave_in_labels_and_capped_by_pass_at_k():
    gains = [o.rl_gain(0.73, o.KAPPA, 1.72, n, 2, 8)[0] for n in (1000, 2000, 4000, 8000, 10**7)]
    steps = [b - a for a, b in zip(gains, gains[1:])]
    assert all(x > 0 for x in steps[:3]) and steps[0] > steps[1] / 2 > 0
    assert 0.73 + gains[-1] <= o.pass_at_k(0.73, o.KAPPA, o.K_CAP)
    assert o.rl_gain(0.73, o.KAPPA, 1.72, 0, 2, 8)[0] == 0


def test_llama_replication_ordering():
    """raw-teacher transfer < direct GRPO < RL-teacher transfer (Llama-3.1-8B, 70B teacher)."""
    s, t = model_info("meta-llama/Llama-3.1-8B-Instruct"), model_info("meta-llama/Llama-3.3-70B-Instruct")
    rs, rt = o.estimate_accuracy(s, "math"), o.estimate_accuracy(t, "math")
    bridge = dict(teacher=t, teacher_rates=rt, teacher_epochs=2, fkl_rollouts=40000, opd_rollouts=40000, pool=40000)
    raw = o.predict(s, rs, o.Pipeline(**bridge)).value
    direct = o.predict(s, rs, o.Pipeline(student_labels=7500, student_epochs=2)).value
    rl = o.predict(s, rs, o.Pipeline(teacher_labels=7500, **bridge)).value
    assert raw < direct < rl


def test_band_contains_value_and_widens_for_estimates():
    p = o.predict(STUDENT, o.SolveRates(0.73), o.Pipeline(student_labels=7500, student_epochs=2))
    assert p.low < p.value < p.high
    est = o.predict(STUDENT, o.SolveRates(0.73, estimated=True), o.Pipeline(student_labels=7500, student_epochs=2))
    assert est.high - est.low > p.high - p.low


def test_missing_accuracy_is_estimated_from_the_family_and_flagged():
    q32 = o.estimate_accuracy(model_info("Qwen/Qwen3-32B"), "math500")
    assert q32.estimated and 0.90 < q32.mean < 0.99 and "estimated" in q32.source
    llama = o.estimate_accuracy(model_info("meta-llama/Llama-3.2-3B-Instruct"), "math500")
    assert llama.estimated and 0 < llama.mean < 1
    known = o.estimate_accuracy(STUDENT, "math500")
    assert not known.estimated and known.mean == 0.73


def test_probe_evidence_recovers_the_beta():
    rng = random.Random(1)
    rows = []
    for _ in range(400):
        p = _beta_sample(0.6, 1.5, rng)
        rows.append((16, sum(rng.random() < p for _ in range(16))))
    fit = o.rates_from_evidence(rows)
    assert fit.mean == pytest.approx(0.6, abs=0.04) and 0.8 < fit.kappa < 3
    assert fit.source.startswith("probe")
    assert o.rates_from_evidence(rows[:3]) is None


def test_calibration_file_overrides_outcome_constants(tmp_path):
    import json

    assert load_calibration(tmp_path).outcome == o.DEFAULT_OUTCOME
    (tmp_path / "calibration.json").write_text(json.dumps({"outcome": {"eta_rl": 0.3, "nonsense": 2}}))
    k = load_calibration(tmp_path).outcome
    assert k.eta_rl == 0.3 and k.f_max == o.F_MAX
    pipe = o.Pipeline(student_labels=7500, student_epochs=2)
    assert o.predict(STUDENT, o.SolveRates(0.73), pipe, k).value > o.predict(STUDENT, o.SolveRates(0.73), pipe).value
