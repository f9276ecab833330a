"""The home's cache of fitted posteriors: ``<home>/posterior/<key>.json``.

A posterior is a pure function of the evidence and the pins (``predict.posterior.fitted``);
fitting takes seconds, so planning keeps each one on disk, named by ``evidence_key``
(the priors, the sampler and the evidence hashed together: any change is a new file).
Planning never creates a home, and an unwritable one only costs the next refit.

    >>> from s2d_plan.predict.posterior import paper_evidence
    >>> posterior_for(paper_evidence(), None).info["data"]
    8
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from s2d_plan.predict.posterior import Datum, Posterior, Progress, evidence_key, fitted, memoized, remember
from s2d_plan.predict.priors import DEFAULT_OUTCOME

CACHE_DIR = "posterior"


def posterior_for(evidence: list[Datum], home: Path | str | None = None, pins: dict[str, float] | None = None,
                  progress: Progress | None = None) -> Posterior:
    """The posterior for ``evidence``: from this process, the home's cache, or a fresh fit
    (then written to ``<home>/posterior/`` if the home exists)."""
    key = evidence_key(evidence, pins)
    known = memoized(key)
    if known is not None:
        return known
    path = Path(home) / CACHE_DIR / f"{key}.json" if home is not None else None
    post = _read(path, pins) if path is not None else None
    if post is not None:
        remember(key, post)
        return post
    post = fitted(evidence, pins, progress)
    if path is not None and path.parent.parent.is_dir():
        _write(path, post)
    return post


def _read(path: Path, pins: dict[str, float] | None) -> Posterior | None:
    try:
        doc = json.loads(path.read_text())
        return Posterior(tuple(doc["names"]), tuple(doc["mean_x"]), tuple(tuple(r) for r in doc["cov_x"]),
                         float(doc["sigma_model"]), replace(DEFAULT_OUTCOME, **(pins or {})), doc["info"],
                         tuple(tuple(r) for r in doc.get("samples_x") or ()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: Path, post: Posterior) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"names": post.names, "mean_x": post.mean_x, "cov_x": post.cov_x,
                                   "sigma_model": post.sigma_model, "info": post.info,
                                   "samples_x": [[round(v, 6) for v in row] for row in post.samples_x]}))
        tmp.replace(path)
    except OSError:
        pass
