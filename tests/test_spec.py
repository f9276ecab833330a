"""The plan spec through the real CLI: every broken plan we keep fails clearly, every
shipped plan passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from s2d_plan.errors import PlanError
from s2d_plan.plan.spec import load_plan, parse_plan
from s2d_plan.plan.yamlio import read_yaml_text

ROOT = Path(__file__).resolve().parents[1]
BAD = sorted((ROOT / "tests" / "bad_plans").glob("*.yaml"))
PLANS = sorted((ROOT / "plans").glob("*.yaml"))

VALID = """\
name: ok
objective: {eval: math500}
student: {model: Qwen/Qwen3-1.7B}
teachers: [{model: Qwen/Qwen3-8B}]
data:
  labeled: {source: x.jsonl, size: 100}
compute: {gpu: H100-80GB, gpus: 1, hours: 10}
eval:
  - {name: math500, source: y.jsonl}
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s2d_plan.cli", *args], capture_output=True, text=True, cwd=ROOT)


def expectations(path: Path) -> list[str]:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect:"), f"{path.name} must start with '# expect: ...'"
    return [part.strip() for part in first.removeprefix("# expect:").split("|")]


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_broken_plan_is_rejected_with_path_and_line(path: Path) -> None:
    result = cli("validate", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for part in expectations(path):
        assert part in result.stderr, f"{part!r} not in:\n{result.stderr}"


def test_broken_plan_set_covers_the_issue() -> None:
    names = {p.stem for p in BAD}
    for wanted in ("typo_top", "typo_deep", "wrong_type", "negative_gpus", "duplicate_key", "syntax_error",
                   "unknown_model", "unknown_gpu", "missing_objective_eval", "list_for_mapping", "empty"):
        assert wanted in names


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
def test_every_shipped_plan_validates(path: Path) -> None:
    result = cli("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout.splitlines()[0]
    spec = load_plan(path)
    assert spec.student.info.params_b > 0
    assert spec.objective.eval in {e.name for e in spec.eval}


def test_budget_plan_is_the_paper_setting() -> None:
    spec = load_plan(ROOT / "plans" / "budget.yaml")
    assert spec.student.model == "Qwen/Qwen3-1.7B"
    assert [t.model for t in spec.teachers] == ["Qwen/Qwen3-8B", "Qwen/Qwen3-14B"]
    assert spec.data.labeled.size == 7500 and spec.data.prompts and spec.data.prompts.size == 40000
    assert spec.compute.gpu_hours == 8 * 72
    assert {e.name for e in spec.eval} == {"math500", "aime24"}


def parse(text: str):
    return parse_plan(read_yaml_text(text, "t.yaml"), "t.yaml")


def test_zero_labels_is_valid() -> None:
    assert parse(VALID.replace("size: 100", "size: 0")).data.labeled.size == 0


def test_yaml11_traps_are_closed() -> None:
    # `no` stays the string it looks like; 1e1 is a number, not the string "1e1"
    spec = parse(VALID.replace("name: ok", "name: no").replace("hours: 10", "hours: 1e1"))
    assert spec.name == "no"
    assert spec.compute.hours == 10.0
    doc = read_yaml_text("lr: 1e-5\nflag: yes\n", "x")
    assert doc.data == {"lr": 1e-05, "flag": "yes"}


def test_all_problems_reported_at_once_in_file_order() -> None:
    text = VALID.replace("gpus: 1", "gpus: 0").replace("size: 100", "sise: 100").replace("{eval: math500}", "{eval: gsm8k}")
    with pytest.raises(PlanError) as info:
        parse(text)
    problems = info.value.problems
    assert len(problems) == 4, problems  # objective, missing size, unknown sise, gpus
    lines = [int(p.split("(line ")[1].split(")")[0]) for p in problems]
    assert lines == sorted(lines)


def test_user_described_model_and_gpu_overrides() -> None:
    text = VALID.replace("{model: Qwen/Qwen3-1.7B}", "{model: ./ckpt, params_b: 0.5, layers: 4, hidden: 256, heads: 4, "
                         "kv_heads: 2, vocab: 151936, tokenizer: qwen3}")
    text = text.replace("{gpu: H100-80GB, gpus: 1, hours: 10}", "{gpu: MI300X, memory_gb: 192, bf16_tflops: 1307, "
                        "bandwidth_tbs: 5.3, gpus: 8, hours: 10}")
    spec = parse(text)
    assert not spec.student.info.known and spec.student.info.shares_tokenizer(spec.teachers[0].info)
    assert spec.compute.gpu_info.memory_gb == 192


def test_registry_override_of_known_model() -> None:
    spec = parse(VALID.replace("{model: Qwen/Qwen3-1.7B}", "{model: Qwen/Qwen3-1.7B, accuracy: {math500: 0.5}}"))
    assert spec.student.info.accuracy["math500"].value == 0.5
    assert spec.student.info.layers == 28  # the rest still comes from the registry


def test_remote_code_opt_in_by_name() -> None:
    custom = ("{model: acme/custom, params_b: 1, layers: 2, hidden: 64, heads: 2, kv_heads: 2, vocab: 100, "
              "tokenizer: acme, requires_remote_code: true}")
    text = VALID.replace("{model: Qwen/Qwen3-1.7B}", custom)
    with pytest.raises(PlanError):
        parse(text)
    assert parse(text + "trust_remote_code: [acme/custom]\n").student.model == "acme/custom"


def test_plan_hash_ignores_formatting() -> None:
    a = parse(VALID)
    b = parse(VALID.replace("gpus: 1, hours: 10", "hours: 10,   gpus: 1") + "\n# a comment\n")
    assert a.hash() == b.hash()
    assert a.hash() != parse(VALID.replace("size: 100", "size: 101")).hash()


def test_relative_sources_resolve_against_the_plan_file(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text("{}\n")
    plan = tmp_path / "p.yaml"
    plan.write_text(VALID)
    spec = load_plan(plan)
    assert spec.resolve_path("x.jsonl") == str(tmp_path / "x.jsonl")
    assert spec.resolve_path("HuggingFaceH4/MATH-500") == "HuggingFaceH4/MATH-500"
