"""Every runner kind for 2 steps on CPU on tiny offline models: alone on a hand-written spec,
under 2 processes, resumed after a crash, and chained through the real executor into DuckDB.

The tiny models (the ``tiny`` fixture, tests/conftest.py) are built once per session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("math_verify")

from s2d_plan.run.launch import stage_command

REPO = Path(__file__).resolve().parent.parent


def run_stage(root: Path, kind: str, stage: dict, inputs: dict, gpus: int = 1, env: dict | None = None,
              reuse: bool = False) -> tuple[subprocess.CompletedProcess, Path]:
    """Write a spec for ``stage`` under ``root`` and run its runner as the executor would."""
    sid = stage.setdefault("id", kind)
    stage["kind"] = kind
    d = root / sid
    if not reuse:
        shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    spec = {"run_id": "t", "attempt": 1, "stage": stage, "inputs": inputs, "output_dir": str(d / "out"),
            "work_dir": str(d / "out.partial"), "metrics_path": str(d / "metrics.jsonl"), "device": "cpu"}
    (d / "spec.json").write_text(json.dumps(spec))
    r = subprocess.run(stage_command(kind, d / "spec.json", gpus=gpus, device="cpu"), cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    return r, d


def metrics(d: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for line in (d / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "key" in row:
            out.setdefault(row["key"], []).append((row["step"], row["value"]))
    return out


def ok(r: subprocess.CompletedProcess, d: Path) -> Path:
    assert r.returncode == 0, r.stderr[-3000:]
    assert (d / "out" / "COMPLETE").is_file() and not (d / "out.partial").exists()
    return d / "out"


def labeled(tiny: Path, count: int = 32, **kw) -> dict:
    return {"source": str(tiny / "data/labeled.jsonl"), "problem_field": "problem", "answer_field": "answer",
            "offset": 0, "count": count, **kw}


def grpo_stage(tiny: Path, policy: str = "teacher", **params) -> tuple[dict, dict]:
    p = {"steps": 2, "num_generations": 4, "prompts_per_step": 2, "max_completion_length": 16, "learning_rate": 1e-4,
         "beta": 0.01, **params}
    return ({"id": "grpo", "policy": str(tiny / policy), "data": {"labeled": labeled(tiny)}, "params": p},
            {"policy": str(tiny / policy)})


def opd_stage(tiny: Path, teacher: str = "teacher") -> tuple[dict, dict]:
    stage = {"id": "opd", "policy": str(tiny / "student"), "teacher": str(tiny / teacher),
             "data": {"prompts": {"source": str(tiny / "data/prompts.jsonl"), "prompt_field": "problem", "count": 16}},
             "params": {"steps": 2, "prompts_per_step": 2, "max_completion_length": 16}}
    return stage, {"policy": str(tiny / "student"), "teacher": str(tiny / teacher)}


# --------------------------------------------------------------------------- each kind alone


def test_grpo(tiny, tmp_path):
    r, d = run_stage(tmp_path, "grpo", *grpo_stage(tiny))
    out = ok(r, d)
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "tokenizer.json").is_file()
    assert not (out / "checkpoints").exists()  # optimizer states are dropped once the model is saved
    m = metrics(d)
    for key in ("reward", "kl", "entropy", "completions/mean_length", "signal_yield", "verifier/accuracy",
                "verifier/parse_failures", "verifier/timeouts"):
        assert [s for s, _ in m[key]] == [1, 2], key
    summary = json.loads((out / "COMPLETE").read_text())["summary"]
    assert summary["steps"] == 2 and summary["labels_used"] == 32


def test_rollout_fkl_sequence_and_token(tiny, tmp_path):
    stage = {"id": "ro", "policy": str(tiny / "teacher"), "data": {"labeled": labeled(tiny, 6)},
             "params": {"samples_per_prompt": 2, "max_new_tokens": 16, "seed": 3}}
    r, d = run_stage(tmp_path, "rollout", dict(stage), {"policy": str(tiny / "teacher")})
    rows = [json.loads(x) for x in (ok(r, d) / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {"prompt", "completion", "prompt_tokens", "completion_tokens", "score"} <= set(rows[0])
    assert "verifier/accuracy" in metrics(d)
    r2, d2 = run_stage(tmp_path / "again", "rollout", dict(stage), {"policy": str(tiny / "teacher")})
    assert (ok(r2, d2) / "rollouts.jsonl").read_text() == (d / "out" / "rollouts.jsonl").read_text()  # seeded

    for mode in ("sequence", "token"):
        fkl = {"id": f"fkl_{mode}", "policy": str(tiny / "student"), "teacher": str(tiny / "teacher"),
               "data": {"rollouts": "@ro"}, "params": {"mode": mode, "steps": 2, "batch_size": 4, "max_length": 64}}
        r, dd = run_stage(tmp_path, "fkl", fkl, {"policy": str(tiny / "student"), "teacher": str(tiny / "teacher"),
                                                 "data.rollouts": str(d / "out")})
        out = ok(r, dd)
        assert (out / "model" / "model.safetensors").is_file()
        assert [s for s, _ in metrics(dd)["loss"]] == [1, 2]


def test_opd(tiny, tmp_path):
    r, d = run_stage(tmp_path, "opd", *opd_stage(tiny))
    ok(r, d)
    m = metrics(d)
    assert [s for s, _ in m["loss"]] == [1, 2] and "completions/mean_length" in m


def test_eval_and_probe(tiny, tmp_path):
    ev = {"id": "ev", "policy": str(tiny / "teacher"),
          "data": {"eval": [{"name": "arith", "source": str(tiny / "data/eval.jsonl"), "problem_field": "problem",
                             "answer_field": "answer", "size": 6}]},
          "params": {"k": 2, "max_new_tokens": 16}}
    r, d = run_stage(tmp_path, "eval", ev, {"policy": str(tiny / "teacher")})
    ok(r, d)
    m = metrics(d)
    assert {"eval/arith/avg@2", "eval/arith/pass@2", "eval/arith/greedy"} <= set(m)
    assert m["eval/arith/avg@2"][0][1] <= m["eval/arith/pass@2"][0][1]

    pr = {"id": "pr", "policy": str(tiny / "teacher"), "data": {"labeled": labeled(tiny, 64, spend=False)},
          "params": {"samples_per_prompt": 4, "num_prompts": 5, "max_new_tokens": 16}}
    r, d = run_stage(tmp_path, "probe", pr, {"policy": str(tiny / "teacher")})
    rows = [json.loads(x) for x in (ok(r, d) / "evidence.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and set(rows[0]) == {"model", "source", "prompt_index", "samples", "correct"}
    assert {"probe/solve_rate", "probe/signal_yield@8"} <= set(metrics(d))


# --------------------------------------------------------------------------- refusals and resume


def test_opd_refuses_other_tokenizer_before_loading_weights(tiny, tmp_path):
    teacher = tmp_path / "other_teacher_no_weights"
    shutil.copytree(tiny / "other_teacher", teacher)
    for w in teacher.glob("*.safetensors"):
        w.unlink()  # if the runner tried to load weights it would fail differently
    stage, inputs = opd_stage(tiny)
    stage["teacher"] = inputs["teacher"] = str(teacher)
    r, d = run_stage(tmp_path, "opd", stage, inputs)
    assert r.returncode == 1
    assert "IncompatibleModelsError" in r.stderr and "vocab_size differs" in r.stderr
    assert "Traceback" not in r.stderr  # a user error is a message

    fkl = {"id": "fkl_token", "policy": str(tiny / "student"), "teacher": str(teacher),
           "data": {"rollouts": "@ro"}, "params": {"mode": "token", "steps": 2}}
    r, _ = run_stage(tmp_path, "fkl", fkl, {"policy": str(tiny / "student"), "teacher": str(teacher),
                                            "data.rollouts": str(tmp_path / "no-rollouts-needed")})
    assert r.returncode == 1 and "IncompatibleModelsError" in r.stderr and "mode: sequence" in r.stderr


def test_unknown_param_is_an_error(tiny, tmp_path):
    stage, inputs = grpo_stage(tiny, num_generation=4)
    r, _ = run_stage(tmp_path, "grpo", stage, inputs)
    assert r.returncode == 2 and "params.num_generation: unknown grpo parameter" in r.stderr
    assert "did you mean 'num_generations'" in r.stderr and "Traceback" not in r.stderr


def test_grpo_resumes_with_data_position(tiny, tmp_path):
    stage, inputs = grpo_stage(tiny, steps=3, save_steps=1, beta=0.0)
    r, full = run_stage(tmp_path / "full", "grpo", json.loads(json.dumps(stage)), inputs)
    ok(r, full)
    r, d = run_stage(tmp_path / "crash", "grpo", json.loads(json.dumps(stage)), inputs,
                     env={"S2D_TEST_CRASH_AFTER_STEP": "2"})
    assert r.returncode == 17 and (d / "out.partial" / "checkpoints" / "checkpoint-2").is_dir()
    r, d = run_stage(tmp_path / "crash", "grpo", json.loads(json.dumps(stage)), inputs, reuse=True)
    out = ok(r, d)
    assert "resuming from" in r.stdout and json.loads((out / "COMPLETE").read_text())["summary"]["resumed_from"]
    # the same prompts in the same order, and the same training trajectory, as without the crash
    assert (out / "data_order.jsonl").read_text() == (full / "out" / "data_order.jsonl").read_text()
    assert metrics(d)["entropy"] == metrics(full)["entropy"]


# --------------------------------------------------------------------------- several processes


@pytest.mark.parametrize("kind", ["grpo", "opd"])
def test_two_cpu_processes(tiny, tmp_path, kind):
    stage, inputs = grpo_stage(tiny) if kind == "grpo" else opd_stage(tiny)
    r, d = run_stage(tmp_path, kind, stage, inputs, gpus=2)
    out = ok(r, d)
    assert json.loads((out / "COMPLETE").read_text())["summary"]["processes"] == 2
    m = metrics(d)
    assert [s for s, _ in m["loss"]] == [1, 2]  # rank 0 alone reports: no duplicated lines


# --------------------------------------------------------------------------- through the executor


def test_every_kind_through_the_executor(tiny, tmp_path):
    from s2d_plan.graph import parse_graph
    from s2d_plan.history.read import open_reader
    from s2d_plan.run.executor import execute_graph
    from s2d_plan.run.progress import PlainDisplay

    T, S = str(tiny / "teacher"), str(tiny / "student")
    prompts = {"source": str(tiny / "data/prompts.jsonl"), "prompt_field": "problem", "count": 8}
    small = {"max_new_tokens": 16}
    train = {"steps": 2, "max_completion_length": 16, "prompts_per_step": 2}
    graph = parse_graph({"plan": "tiny-all-kinds", "stages": [
        {"id": "probe_teacher", "kind": "probe", "policy": T, "data": {"labeled": labeled(tiny, 64, spend=False)},
         "params": {"samples_per_prompt": 4, "num_prompts": 4, **small}},
        {"id": "teacher_grpo", "kind": "grpo", "policy": T, "data": {"labeled": labeled(tiny, 16)},
         "params": {**train, "num_generations": 4}},
        {"id": "teacher_rollouts", "kind": "rollout", "policy": "@teacher_grpo", "needs": ["teacher_grpo"],
         "data": {"prompts": prompts}, "params": {"samples_per_prompt": 2, **small}},
        {"id": "student_fkl", "kind": "fkl", "policy": S, "teacher": "@teacher_grpo",
         "needs": ["teacher_grpo", "teacher_rollouts"], "data": {"rollouts": "@teacher_rollouts"},
         "params": {"steps": 2, "batch_size": 4, "max_length": 64}},
        {"id": "student_opd", "kind": "opd", "policy": "@student_fkl", "teacher": "@teacher_grpo",
         "needs": ["student_fkl", "teacher_grpo"], "data": {"prompts": prompts}, "params": train},
        {"id": "student_grpo", "kind": "grpo", "policy": "@student_opd", "needs": ["student_opd"],
         "data": {"labeled": {**labeled(tiny, 16), "offset": 16}}, "params": {**train, "num_generations": 4}},
        {"id": "final_eval", "kind": "eval", "policy": "@student_grpo", "needs": ["student_grpo"],
         "data": {"eval": [{"name": "arith", "source": str(tiny / "data/eval.jsonl"), "size": 4}]},
         "params": {"k": 2, **small}},
    ]})
    home = tmp_path / "home"
    result = execute_graph(graph, home, display=PlainDisplay(every_s=1e9))
    assert result.status == "FINISHED", result.failures
    with open_reader(home) as con:
        status = dict(con.execute("SELECT stage_id, status FROM stages WHERE run_id = ?", [result.run_id]).fetchall())
        keys = con.execute("SELECT stage_id, key, max(step) FROM metrics WHERE run_id = ? GROUP BY ALL",
                           [result.run_id]).fetchall()
        evidence = con.execute("SELECT count(*), sum(samples) FROM evidence WHERE run_id = ?",
                               [result.run_id]).fetchone()
    assert set(status.values()) == {"FINISHED"} and len(status) == 7
    have = {(s, k): step for s, k, step in keys}
    for stage_id, key, step in [("teacher_grpo", "reward", 2), ("teacher_grpo", "signal_yield", 2),
                                ("student_fkl", "loss", 2), ("student_opd", "loss", 2),
                                ("student_grpo", "verifier/accuracy", 2), ("final_eval", "eval/arith/avg@2", 0),
                                ("final_eval", "eval/arith/pass@2", 0), ("probe_teacher", "probe/solve_rate", 0),
                                ("teacher_rollouts", "rollout/samples", 0)]:
        assert have.get((stage_id, key)) == step, (stage_id, key)
    assert evidence == (4, 16)


# --------------------------------------------------------------------------- data, watchdog, estimators (no models)


def test_data_formats_and_field_mapping(tmp_path):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    from runners.data import DataError, load_labeled, load_prompts
    from s2d_plan.contract import LabeledSlice, PromptSlice

    rows = [{"q": f"What is {i} + 1?", "a": str(i + 1)} for i in range(10)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["q", "a"])
        w.writeheader()
        w.writerows(rows)
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "d_disk"))
    for src in ("d.jsonl", "d.parquet", "d.csv", "d_disk"):
        got = load_labeled(LabeledSlice(**{"source": str(tmp_path / src), "problem_field": "q", "answer_field": "a",
                            "offset": 2, "count": 3}))
        assert got == [{"problem": rows[i]["q"], "answer": rows[i]["a"], "index": i} for i in (2, 3, 4)], src
    assert load_prompts(PromptSlice(**{"source": str(tmp_path / "d.jsonl"), "prompt_field": "q", "count": 1}))[0]["index"] == 0
    with pytest.raises(DataError, match="no problem field 'problem'"):
        load_labeled(LabeledSlice(**{"source": str(tmp_path / "d.jsonl"), "problem_field": "problem", "answer_field": "a"}))
    with pytest.raises(DataError, match=r"slice \[8, 13\) is outside its 10 rows"):
        load_labeled(LabeledSlice(**{"source": str(tmp_path / "d.jsonl"), "problem_field": "q", "answer_field": "a",
                      "offset": 8, "count": 5}))


def test_hub_id_without_network_is_a_clear_error(monkeypatch):
    from runners.data import DataError, load_rows

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="(?s)hub cannot be reached.*save_to_disk"):
        load_rows("HuggingFaceH4/MATH-500")


def test_zero_reward_watchdog_warns(capsys, tmp_path):
    from runners._train import ZeroRewardWatchdog
    from runners.common import MetricWriter
    from runners.verifier import Verdict

    writer = MetricWriter(tmp_path / "m.jsonl")
    dog = ZeroRewardWatchdog(writer, patience=3)
    zero = [Verdict(0.0, "no_answer")] * 4
    assert not dog.update(1, zero, ["text"] * 4) and not dog.update(2, zero, ["text"] * 4)
    assert not dog.update(3, zero, [""] * 4)  # empty completions are a different problem: the run resets
    for step in (4, 5):
        dog.update(step, zero, ["text"] * 4)
    assert dog.update(6, zero, ["text"] * 4)
    writer.close()
    assert "scored every completion 0 for 3 batches" in capsys.readouterr().err
    assert "verifier/zero_reward_alarm" in (tmp_path / "m.jsonl").read_text()


def test_signal_yield_estimators():
    from runners._train import observed_signal_yield as batch_yield
    from runners.probe import prompt_signal_yield as signal_yield

    assert signal_yield(0, 8) == 0 and signal_yield(8, 8) == 0
    assert signal_yield(4, 8) == 1.0  # all 8 samples drawn: 4 right, 4 wrong, always mixed
    assert signal_yield(4, 16) == pytest.approx(1 - 495 / 12870)  # C(4,8)=0, C(12,8)=495, C(16,8)=12870
    assert signal_yield(1, 2) == pytest.approx(1 - 2 * 0.5 ** 8)  # fewer samples than G: plug-in
    assert batch_yield([0, 0, 1, 1, 2, 2], [1, 0, 1, 1, 0, 0]) == pytest.approx(1 / 3)


def test_latest_checkpoint_skips_a_half_written_one(tmp_path):
    from runners._train import latest_checkpoint
    from s2d_plan.contract import StageSpec

    spec = StageSpec(run_id="r", attempt=1, stage={"id": "s", "kind": "grpo", "policy": "m"},
                     output_dir=tmp_path / "out", work_dir=tmp_path / "work", metrics_path=tmp_path / "m.jsonl")
    assert latest_checkpoint(spec) is None
    for step, state in ((2, "{}"), (10, "{}"), (11, '{"trunc'), (12, None)):
        d = tmp_path / "work" / "checkpoints" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        if state is not None:
            (d / "trainer_state.json").write_text(state)
    assert latest_checkpoint(spec).endswith("checkpoint-10")  # numeric order, complete ones only


def test_grpo_with_lora_saves_a_plain_model_later_stages_can_load(tiny, tmp_path):
    r, d = run_stage(tmp_path, "grpo", *grpo_stage(tiny, lora=True, beta=0.0))
    out = ok(r, d)
    # the adapter is merged: downstream stages load model/ like any checkpoint
    assert (out / "model" / "model.safetensors").is_file() and not (out / "model" / "adapter_config.json").exists()
    assert json.loads((out / "COMPLETE").read_text())["summary"]["steps"] == 2


def test_fkl_and_opd_with_lora_save_plain_models_later_stages_can_load(tiny, tmp_path):
    """The bridge under LoRA, chained as a compiled graph chains it: token-level FKL trains
    adapters on the student, OPD trains new adapters on FKL's merged output, and the final
    model loads as a plain checkpoint. Only the adapters trained, at the stage's rate."""
    from transformers import AutoModelForCausalLM

    ro = {"id": "ro", "policy": str(tiny / "teacher"), "data": {"labeled": labeled(tiny, 6)},
          "params": {"samples_per_prompt": 2, "max_new_tokens": 16}}
    r, d_ro = run_stage(tmp_path, "rollout", ro, {"policy": str(tiny / "teacher")})
    ok(r, d_ro)
    fkl = {"id": "fkl", "policy": str(tiny / "student"), "teacher": str(tiny / "teacher"), "data": {"rollouts": "@ro"},
           "params": {"mode": "token", "steps": 2, "batch_size": 4, "per_device_batch_size": 2, "max_length": 64,
                      "lora": True, "learning_rate": 5e-3}}
    r, d_fkl = run_stage(tmp_path, "fkl", fkl, {"policy": str(tiny / "student"), "teacher": str(tiny / "teacher"),
                                                "data.rollouts": str(d_ro / "out")})
    out_fkl = ok(r, d_fkl)
    stage, inputs = opd_stage(tiny)
    stage["policy"] = inputs["policy"] = str(out_fkl)  # a stage output: the runner loads out/model
    stage["params"].update(lora=True, learning_rate=5e-3)
    r, d_opd = run_stage(tmp_path, "opd", stage, inputs)
    out_opd = ok(r, d_opd)
    student = AutoModelForCausalLM.from_pretrained(tiny / "student")
    for out in (out_fkl, out_opd):
        summary = json.loads((out / "COMPLETE").read_text())["summary"]
        assert summary["lora"] is True and summary["steps"] == 2
        assert 0 < summary["trained_params"] < 0.5 * summary["params"]  # adapters, not the whole model
        assert not (out / "model" / "adapter_config.json").exists()
        merged = AutoModelForCausalLM.from_pretrained(out / "model")  # a plain checkpoint
        assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in student.parameters())
        changed = [n for n, p in merged.state_dict().items() if not p.equal(student.state_dict()[n])]
        assert changed and all("_proj." in n for n in changed), [n for n in changed if "_proj." not in n]
    assert [s for s, _ in metrics(d_opd)["loss"]] == [1, 2]
    assert [v for _, v in metrics(d_opd)["learning_rate"]][0] <= 5e-3
