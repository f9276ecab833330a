"""A world: one tinyworld setting, written as a small spec on the command line.

    difficulty=1,student=2x64@1500,teacher=4x128@2000,labels=512,prompts=4096,hours=0.03

Fields (all required but ``name``; order free; no spaces needed):

    name        a label for tables (default: built from the other fields)
    difficulty  the task's number of operations; only worlds with a built base world
                (tinyworld/pretrained/d<difficulty>, or tinyworld-cache/d<difficulty>) exist
    student     LAYERSxHIDDEN@STEPS: a model of that shape after STEPS pretraining steps
    teacher     the same form, strictly more parameters than the student
    labels      labeled (verifiable) examples, in total: direct GRPO spends all of them, the
                paper's recipe half on the teacher (Stage 1) and half held out for Stage 3
    prompts     unlabeled prompts for the bridge (teacher rollouts use the first half, OPD
                the second)
    hours       the compute scale in CPU-hours: the paper's full recipe (arm f) is sized to
                it by per-step seconds measured in the d1 benchmark; every policy then gets
                what f MEASURED in this world (at least ``hours``), pilots included

A model ``LxH@S`` is the base world's own student or teacher when it matches its shape and
steps, else one shipped in ``tinyworld/pretrained/d1-variants/`` (the built-in grid's three:
2x64@800, 2x64@3000, 3x64@1500, 2 MB), else a variant built by ``python -m tinyworld.variants``
under ``tinyworld-cache/models/LxH@S`` (``worlds.py`` says the exact command when one is missing).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "tinyworld-cache" / "models"
FIELDS = ("difficulty", "student", "teacher", "labels", "prompts", "hours")
_MODEL = re.compile(r"^(\d+)x(\d+)@(\d+)$")
MAX_LABELED = 512 + 2048  # the base world's labeled rows, plus the prompt pool's second half with its answers


class WorldSpecError(ValueError):
    """A world spec that cannot be run, with the field and the reason."""


@dataclass(frozen=True)
class ModelSpec:
    layers: int
    hidden: int
    steps: int

    @property
    def name(self) -> str:
        return f"{self.layers}x{self.hidden}@{self.steps}"

    @property
    def size(self) -> int:  # a proxy for parameters that orders shapes (layers x hidden^2)
        return self.layers * self.hidden ** 2


@dataclass(frozen=True)
class World:
    name: str
    difficulty: int
    student: ModelSpec
    teacher: ModelSpec
    labels: int
    prompts: int
    hours: float

    def spec(self) -> str:
        return (f"name={self.name},difficulty={self.difficulty},student={self.student.name},"
                f"teacher={self.teacher.name},labels={self.labels},prompts={self.prompts},hours={self.hours:g}")


def _model(field: str, text: str) -> ModelSpec:
    m = _MODEL.match(text.strip().lstrip("st"))
    if not m:
        raise WorldSpecError(f"world spec: {field}={text!r} is not LAYERSxHIDDEN@STEPS (e.g. {field}=2x64@1500)")
    layers, hidden, steps = (int(x) for x in m.groups())
    if not (1 <= layers <= 8 and 16 <= hidden <= 256 and hidden % 16 == 0 and 1 <= steps <= 20000):
        raise WorldSpecError(f"world spec: {field}={text!r}: layers 1-8, hidden 16-256 (a multiple of 16), "
                             "steps 1-20000")
    return ModelSpec(layers, hidden, steps)


def _number(field: str, text: str, kind: type, low: float, high: float):
    try:
        value = kind(text)
    except ValueError:
        raise WorldSpecError(f"world spec: {field}={text!r} is not a{'n integer' if kind is int else ' number'}") from None
    if not low <= value <= high:
        raise WorldSpecError(f"world spec: {field}={text!r} is out of range [{low:g}, {high:g}]")
    return value


def parse_world(text: str) -> World:
    """``"k=v,k=v,..."`` -> World; a WorldSpecError names the field that is wrong.

    >>> parse_world("difficulty=1,student=2x64@1500,teacher=4x128@2000,labels=512,prompts=4096,hours=0.03").teacher.name
    '4x128@2000'
    """
    fields: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not value.strip():
            raise WorldSpecError(f"world spec: {part!r} is not key=value")
        if key not in FIELDS + ("name",):
            raise WorldSpecError(f"world spec: unknown field {key!r} (fields: name, {', '.join(FIELDS)})")
        if key in fields:
            raise WorldSpecError(f"world spec: {key} given twice")
        fields[key] = value.strip()
    missing = [f for f in FIELDS if f not in fields]
    if missing:
        raise WorldSpecError(f"world spec: missing {', '.join(missing)} (a world needs {', '.join(FIELDS)})")
    student, teacher = _model("student", fields["student"]), _model("teacher", fields["teacher"])
    if teacher.size <= student.size:
        raise WorldSpecError(f"world spec: the teacher ({teacher.name}) must be larger than the student "
                             f"({student.name})")
    world = World(name="", difficulty=_number("difficulty", fields["difficulty"], int, 1, 4), student=student,
                  teacher=teacher, labels=_number("labels", fields["labels"], int, 0, MAX_LABELED),
                  prompts=_number("prompts", fields["prompts"], int, 32, 4096),
                  hours=_number("hours", fields["hours"], float, 0.001, 1.0))
    name = fields.get("name") or f"d{world.difficulty}-s{student.name}-t{teacher.name}-L{world.labels}-h{world.hours:g}"
    if not re.match(r"^[A-Za-z0-9_.@-]+$", name):
        raise WorldSpecError(f"world spec: name={name!r}: letters, digits and _ . @ - only")
    return World(**{**world.__dict__, "name": name})


# ---------------------------------------------------------------- the built-in grid

D1 = "difficulty=1,student=2x64@1500,teacher=4x128@2000,prompts=4096"
# name -> spec, chosen (before any grid run) so that different pipelines are expected to win;
# the table says which do. Base accuracies (held-out sampled avg@4): 2x64@1500 52.9% (the
# shipped d1 student), 2x64@800 28.3%, 2x64@3000 61.4%, 3x64@1500 37.6%, 4x128@2000 63.1%.
BUILTIN = {
    "paper": f"{D1},labels=512,hours=0.01",  # the tinyworld setting: a strong teacher, a fair label set
    "few-labels": f"{D1},labels=16,hours=0.01",  # almost no labels: distil from the raw teacher
    "weak-student": "difficulty=1,student=2x64@800,teacher=4x128@2000,prompts=4096,labels=512,hours=0.01",
    "strong-student": "difficulty=1,student=2x64@3000,teacher=4x128@2000,prompts=4096,labels=512,hours=0.01",
    "weak-teacher": "difficulty=1,student=2x64@1500,teacher=3x64@1500,prompts=4096,labels=512,hours=0.01",
    "tight": f"{D1},labels=512,hours=0.0025",  # compute for little more than one short GRPO run
    "no-labels": f"{D1},labels=0,hours=0.01",  # nothing to verify: only distillation from the raw teacher can help
}


def builtin_worlds() -> list[World]:
    return [parse_world(f"name={n},{s}") for n, s in BUILTIN.items()]


# ---------------------------------------------------------------- models and data on disk


def base_world(difficulty: int) -> Path:
    for path in (REPO / "tinyworld" / "pretrained" / f"d{difficulty}", REPO / "tinyworld-cache" / f"d{difficulty}"):
        if (path / "world.json").exists():
            return path
    raise WorldSpecError(f"no built tinyworld for difficulty {difficulty}: run "
                         f"`python -m tinyworld.build tinyworld-cache/d{difficulty} --difficulty {difficulty}` first")


def model_path(world: World, m: ModelSpec) -> tuple[Path, dict]:
    """Where model ``m`` lives and its description (shape, params, base accuracy)."""
    base = base_world(world.difficulty)
    info = json.loads((base / "world.json").read_text())
    for role in ("student", "teacher"):
        own = info["models"][role]
        if (own["layers"], own["hidden"], own["steps"]) == (m.layers, m.hidden, m.steps):
            return base / role, own
    shipped = REPO / "tinyworld" / "pretrained" / f"d{world.difficulty}-variants" / m.name  # the built-in grid's
    path = shipped if (shipped / "model.json").exists() else MODELS / m.name
    if not (path / "model.json").exists():
        raise WorldSpecError(
            f"model {m.name} is not built: run `python -m tinyworld.variants {base.relative_to(REPO)} "
            f"tinyworld-cache/models --shape {m.layers}x{m.hidden} --steps {m.steps}` (one thread, minutes)")
    return path, json.loads((path / "model.json").read_text())


def data_dir(world: World, cache: Path) -> Path:
    """The world's labeled and prompt files: the base world's labeled rows, then (past 512) the
    prompt pool's last rows with their answers; prompts are the pool's first ``prompts`` rows,
    never the same rows as labels. Written once under ``cache``."""
    base = base_world(world.difficulty) / "data"
    pool = [json.loads(x) for x in (base / "prompts.jsonl").read_text().splitlines() if x.strip()]
    labeled = [json.loads(x) for x in (base / "labeled.jsonl").read_text().splitlines() if x.strip()]
    extra = max(0, world.labels - len(labeled))
    if world.prompts + extra > len(pool):
        raise WorldSpecError(f"world {world.name}: labels={world.labels} and prompts={world.prompts} need "
                             f"{world.prompts + extra} of the pool's {len(pool)} rows")
    labeled += pool[len(pool) - extra:] if extra else []
    out = cache / "data" / f"d{world.difficulty}-L{world.labels}-P{world.prompts}"
    if not (out / "eval.jsonl").exists():
        out.mkdir(parents=True, exist_ok=True)
        (out / "labeled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labeled[:max(world.labels, 1)]))
        (out / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool[:world.prompts]))
        (out / "eval.jsonl").write_text((base / "eval.jsonl").read_text())
    return out
