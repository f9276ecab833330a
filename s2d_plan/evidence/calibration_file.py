"""The calibration file, ``<home>/calibration.json``: its one reader and its one writer.

``s2d-plan calibrate`` writes it: ``"evidence"`` (the finished runs of the history as
data for the outcome posterior: each run's prediction inputs, its measured accuracy and
the noise of that measurement), ``"costs"`` (cost constants by their lower-case names,
and per-kind time factors as ``"kind_factors": {"grpo": 0.44, ...}``) and ``"fit"`` (how
it was made). ``"outcome"`` holds outcome constants a user pins by hand: they leave the
posterior and keep that value. ``recommend`` reads it through ``load_calibration``. A
missing or unreadable file means the shipped constants and the paper's evidence alone;
an unknown name, a non-number or a malformed datum is ignored, never an error in the
middle of a plan.

    >>> cal = load_calibration("/nonexistent")
    >>> cal.costs.mfu_train, cal.fit is None
    (0.3, True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from s2d_plan.predict.costs import DEFAULT_CONSTANTS, CostConstants
from s2d_plan.predict.outcome import DEFAULT_OUTCOME, OutcomeConstants
from s2d_plan.predict.posterior import Datum, datum_from_json

FILENAME = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    costs: CostConstants = DEFAULT_CONSTANTS
    outcome: OutcomeConstants = DEFAULT_OUTCOME
    fit: dict[str, Any] | None = None  # how the stored constants were fitted
    raw: dict[str, Any] | None = None  # the document as read (None: no file)
    path: Path | None = None

    @property
    def pins(self) -> dict[str, float]:
        """Outcome constants the file fixes (they leave the posterior)."""
        return {n: getattr(self.outcome, n) for n in (self.raw or {}).get("outcome") or {}
                if n in {f.name for f in fields(OutcomeConstants)}}

    @property
    def evidence(self) -> list[Datum]:
        """The history's runs that ``calibrate`` stored, as data for the posterior."""
        out = []
        for raw in (self.raw or {}).get("evidence") or []:
            try:
                out.append(datum_from_json(raw))
            except (KeyError, TypeError, ValueError):
                continue
        return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _override(base: Any, raw: Any) -> Any:
    if not isinstance(raw, dict):
        return base
    known = {f.name for f in fields(base)}
    picked: dict[str, Any] = {k: type(getattr(base, k))(v) for k, v in raw.items() if k in known and _number(v)}
    if "kind_factors" in known and isinstance(raw.get("kind_factors"), dict):  # per stage kind: {"grpo": 0.44}
        picked["kind_factors"] = tuple(sorted((str(k), float(v)) for k, v in raw["kind_factors"].items()
                                              if _number(v) and v > 0))
    return replace(base, **picked)


def load_calibration(home: str | Path | None) -> Calibration:
    """The constants in force for ``home`` (the shipped ones where it has no calibration)."""
    if home is None:
        return Calibration()
    path = Path(home) / FILENAME
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return Calibration()
    if not isinstance(doc, dict):
        return Calibration()
    fit = doc.get("fit") if isinstance(doc.get("fit"), dict) else None
    return Calibration(_override(DEFAULT_CONSTANTS, doc.get("costs")), _override(DEFAULT_OUTCOME, doc.get("outcome")),
                       fit, doc, path)


def write_calibration(home: Path, doc: dict[str, Any]) -> Path:
    """Replace ``<home>/calibration.json`` atomically."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / FILENAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    return path


def describe(cal: Calibration) -> str | None:
    """One line for ``recommend`` when a calibration is in use, else None."""
    if not cal.raw:
        return None
    keys = sorted(cal.raw.get("outcome") or {}) + sorted(cal.raw.get("costs") or {}) + \
        (["evidence"] if cal.raw.get("evidence") else [])
    if not keys:
        return None
    fit = cal.fit or {}
    if fit.get("runs"):
        return (f"Posterior updated by {fit['runs']} run(s) of the history ({cal.path}, {fit.get('time', '?')}): "
                f"outcome error {fit['rmse_before'] * 100:.1f} -> {fit['rmse_after'] * 100:.1f} points RMSE"
                + (f"; {_time_factors(cal)}" if fit.get("costs") else "") + ".")
    return f"Constants overridden by {cal.path}: {', '.join(keys)}."


def _time_factors(cal: Calibration) -> str:
    c = cal.costs
    own = ", ".join(f"{k} {f:.3g}" for k, f in c.kind_factors)
    return f"cost time factors {own + ', ' if own else ''}other kinds {c.time_factor:.3g}"
