"""The contract between the planner and the runners: the one module both import.

The planner (``s2d_plan``) compiles stages; the executor writes one *stage spec* file
per attempt and starts ``python -m <kind module> SPEC.json``; a runner (``runners``)
reads that file back. Everything both sides must agree on lives here and nowhere else:

* the typed stage: ``Stage`` with a params model per kind (unknown or mistyped
  parameters are refused when a graph is read, not when a runner starts), one data
  slice type per pool, and the ``@stage`` reference syntax (``stage_ref``);
* the kinds themselves (``KINDS``): the module that runs each, what it produces
  (a checkpoint, a dataset), whether its work directory survives a failed attempt;
* the spec file (``StageSpec``), the output file names and the ``COMPLETE`` marker
  (``finalize``, ``is_complete``).

Kinds are a closed set. A test suite may add a fake kind with ``register_kind`` from a
module named in ``S2D_STAGE_PLUGINS`` (comma-separated), so that an executor started
in another process knows it too; the product ships none.

    >>> s = Stage.model_validate({"id": "a", "kind": "grpo", "policy": "@b", "needs": ["b"],
    ...                           "params": {"steps": 3}})
    >>> s.params.steps, s.params.num_generations, stage_ref(s.policy)
    (3, 8, 'b')
"""

from __future__ import annotations

from s2d_plan.contract.files import (
                                     COMPLETE_MARKER,
                                     EVIDENCE_FILE,
                                     MODEL_SUBDIR,
                                     ROLLOUTS_FILE,
                                     TRACKERS,
                                     StageSpec,
                                     Tracking,
                                     finalize,
                                     is_complete,
                                     load_spec,
                                     validation_problems,
                                     write_spec,
)
from s2d_plan.contract.params import (
                                     MAX_BATCH,
                                     MAX_GPU_HOURS,
                                     MAX_GPUS,
                                     MAX_ROWS,
                                     MAX_SAMPLES,
                                     MAX_SEED,
                                     MAX_STAGE_ID,
                                     MAX_STEPS,
                                     MAX_TEXT,
                                     MAX_TOKENS,
                                     EvalParams,
                                     FklParams,
                                     GrpoParams,
                                     OpdParams,
                                     Params,
                                     ProbeParams,
                                     RolloutParams,
                                     VllmSettings,
)
from s2d_plan.contract.stage import (
                                     KINDS,
                                     PLUGINS_ENV,
                                     REF,
                                     EvalSlice,
                                     Kind,
                                     LabeledSlice,
                                     ModelOrRef,
                                     PromptSlice,
                                     Resources,
                                     Stage,
                                     StageData,
                                     StageEstimate,
                                     kind_of,
                                     register_kind,
                                     short_name,
                                     shown_value,
                                     stage_ref,
)
from s2d_plan.errors import ConfigurationError, IncompatibleModelsError, S2DError

__all__ = ["MAX_BATCH", "MAX_GPU_HOURS", "MAX_GPUS", "MAX_ROWS", "MAX_SAMPLES", "MAX_SEED", "MAX_STAGE_ID",
           "MAX_STEPS", "MAX_TEXT", "MAX_TOKENS", "COMPLETE_MARKER", "EVIDENCE_FILE", "KINDS", "MODEL_SUBDIR", "PLUGINS_ENV", "REF", "ROLLOUTS_FILE",
           "ConfigurationError", "EvalParams", "EvalSlice", "FklParams", "GrpoParams", "IncompatibleModelsError",
           "Kind", "LabeledSlice", "ModelOrRef", "OpdParams", "Params", "ProbeParams", "PromptSlice", "Resources",
           "RolloutParams", "S2DError", "Stage", "StageData", "StageEstimate", "StageSpec", "TRACKERS", "Tracking",
           "VllmSettings", "finalize", "is_complete", "kind_of", "load_spec", "register_kind", "short_name", "shown_value",
           "stage_ref", "validation_problems", "write_spec"]
