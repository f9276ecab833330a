"""recommend's one-line summary writes GPU-hours as people do (no 1.6e+03)."""

from __future__ import annotations

from pathlib import Path

from s2d_plan.api import recommend

ROOT = Path(__file__).resolve().parents[1]


def test_summary_has_no_scientific_notation(tmp_path):
    plan = tmp_path / "plan.yaml"  # 8 GPUs x 200 hours = 1,600 GPU-hours (was written 1.6e+03)
    plan.write_text((ROOT / "plans" / "budget.yaml").read_text().replace("hours: 72", "hours: 200"))
    rec = recommend(str(plan), home=str(tmp_path / "home"))
    assert "e+" not in rec.summary
    assert " of 1,600 GPU-hours" in rec.summary
