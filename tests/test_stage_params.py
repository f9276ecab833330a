"""Every recommended graph runs as the cost model priced it: each stage's parameters carry
the memory model's choices (LoRA, micro-batch, vLLM memory fraction, tensor parallelism,
sleep mode), and the runners hand exactly those to TRL and vLLM. The configs are built
here on the CPU, as the runners build them, from graphs compiled from real plans."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from s2d_plan.api import recommend
from s2d_plan.contract import StageSpec
from s2d_plan.errors import InfeasibleError

ROOT = Path(__file__).resolve().parents[1]
PLANS = sorted(str(p.relative_to(ROOT)) for p in [*(ROOT / "plans").glob("*.yaml"), *(ROOT / "tests/plans").glob("*.yaml")])
GENERATES = ("grpo", "opd", "rollout", "eval", "probe")
TRAINS = ("grpo", "opd", "fkl")
FULL_LR = {"grpo": 1e-6, "fkl": 1e-5, "opd": 1e-6}


def graphs(home: Path):
    out = {}
    for plan in PLANS:
        try:
            out[plan] = recommend(ROOT / plan, home=home, trials=40)
        except InfeasibleError:
            continue  # impossible-budget, no-memory: refused, never compiled
    return out


@pytest.fixture(scope="module")
def recommended(shared_home):
    return graphs(shared_home)


@pytest.fixture(scope="module")
def compiled(recommended):
    return {plan: rec.graph for plan, rec in recommended.items()}


def _tp(strategy: str) -> int:
    found = re.findall(r"tp(\d+)", strategy or "")
    return int(found[-1]) if found else 1


def test_stage_params_carry_the_memory_models_choices(recommended):
    """On the pick and on every alternative the allocator priced (the pick of a plan may
    well be direct GRPO, while its bridge alternatives are what puts LoRA on fkl/opd)."""
    from s2d_plan.compiler import compile_stages

    assert len(recommended) >= 10
    lora_bridges = 0
    for plan, rec in recommended.items():
        for alloc in [rec.result.best, *rec.result.alternatives]:
            lora_bridges += _check_stages(plan, compile_stages(rec.ctx, alloc), alloc.costs, rec.ctx.scale.tiny)
    assert lora_bridges >= 1  # some shipped plan prices a bridge under LoRA (small-gpu.yaml)


def _check_stages(plan, stages, estimates, tiny: bool) -> int:
    lora_bridges = 0
    for st in stages:
        p, strategy, est = st.params, st.estimated.strategy or "", estimates[st.id]
        where = f"{plan}: {st.id}"
        if st.kind in GENERATES:
            v = p.vllm
            assert v.mode == "colocate", where  # the executor starts no vLLM server
            assert "gpu_memory_utilization" in v.model_fields_set, where  # written, not a default
            assert v.gpu_memory_utilization == est.vllm_fraction and 0.05 <= est.vllm_fraction <= 0.95, where
            assert v.enable_sleep_mode == est.sleep and v.tensor_parallel_size == est.tp, where
            assert v.tensor_parallel_size == _tp(strategy), where
            assert st.resources.gpus % v.tensor_parallel_size == 0, where
            assert v.max_model_len and v.max_model_len >= getattr(p, "max_completion_length",
                                                                  getattr(p, "max_new_tokens", 0)), where
        if st.kind in TRAINS:
            assert p.lora == strategy.startswith("lora"), where
            assert p.per_device_batch_size <= est.micro_batch, where
            if not tiny:  # CPU-scale plans train models from scratch at their own rates
                assert p.learning_rate == pytest.approx(FULL_LR[st.kind] * (10 if p.lora else 1)), where
            lora_bridges += st.kind in ("fkl", "opd") and p.lora
    return lora_bridges


def test_every_recommended_graph_passes_validate(compiled, tmp_path):
    from s2d_plan.api import validate

    for plan, graph in compiled.items():
        path = tmp_path / "graph.json"
        path.write_text(graph.model_dump_json())
        v = validate(path, ROOT / plan)
        assert v.problems == [], (plan, [str(p) for p in v.problems])


def _spec(st, tmp_path) -> StageSpec:
    return StageSpec(run_id="r", attempt=1, stage=st, output_dir=tmp_path / "out", work_dir=tmp_path / "work",
                     metrics_path=tmp_path / "m.jsonl", device="cpu")


def test_runners_hand_the_stage_settings_to_trl_and_vllm(compiled, tmp_path, monkeypatch):
    """Built on the CPU with no vLLM: use_vllm is off, yet every vllm_* field is the stage's
    (TRL's default fraction of 0.3 never applies), and learning rate and batch layout are
    what the compiler wrote."""
    pytest.importorskip("trl")
    from runners import _train, fkl, grpo, opd
    from runners._sample import llm_kwargs

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    checked = set()
    for graph in compiled.values():
        for st in graph.stages:
            p = st.params
            if st.kind in TRAINS:
                # the step splits over the stage's processes with the planned micro-batch
                per_step = {"grpo": lambda p=p: p.prompts_per_step * p.num_generations, "opd": lambda p=p: p.prompts_per_step,
                            "fkl": lambda p=p: p.batch_size}[st.kind]()
                micro, accum = _train.batch_layout(st.kind, per_step, p.per_device_batch_size, st.resources.gpus)
                assert micro * accum * st.resources.gpus == per_step
                cfg = {"grpo": grpo, "opd": opd, "fkl": fkl}[st.kind].config(_spec(st, tmp_path), "cpu")
                assert cfg.learning_rate == p.learning_rate and cfg.max_steps == p.steps
                assert cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps == per_step  # one process here
                checked.add(st.kind)
            if st.kind in ("grpo", "opd"):
                v = p.vllm
                assert (cfg.use_vllm, cfg.vllm_mode, cfg.vllm_gpu_memory_utilization, cfg.vllm_tensor_parallel_size,
                        cfg.vllm_enable_sleep_mode, cfg.vllm_max_model_length) == \
                    (False, v.mode, v.gpu_memory_utilization, v.tensor_parallel_size, v.enable_sleep_mode,
                     v.max_model_len)
            if st.kind in ("rollout", "eval", "probe"):
                kw = llm_kwargs("/m", 0, p.vllm)
                assert kw["gpu_memory_utilization"] == p.vllm.gpu_memory_utilization
                assert kw["tensor_parallel_size"] == p.vllm.tensor_parallel_size
                checked.add(st.kind)
    assert checked == set(GENERATES) | set(TRAINS)


def test_a_stage_without_vllm_settings_never_gets_trls_default(tmp_path):
    pytest.importorskip("trl")
    from runners import grpo
    from s2d_plan.contract import Stage

    st = Stage.model_validate({"id": "g", "kind": "grpo", "policy": "m", "params": {"steps": 2, "prompts_per_step": 2,
                                                                                   "num_generations": 4}})
    cfg = grpo.config(_spec(st, tmp_path), "cpu")
    assert cfg.vllm_gpu_memory_utilization == 0.5 and cfg.vllm_mode == "colocate"


def test_sampling_stages_refuse_a_vllm_server():
    from s2d_plan.contract import Stage

    with pytest.raises(ValueError, match="only colocate"):
        Stage.model_validate({"id": "e", "kind": "eval", "policy": "m", "params": {"vllm": {"mode": "server"}}})


def test_dry_run_shows_each_stages_vllm_settings_and_lora(cli, tmp_path, s2d_home):
    from s2d_plan.graph import load_graph

    path = tmp_path / "small-gpu.json"
    rec = cli("recommend", "tests/plans/small-gpu.yaml", "-o", str(path), "--trials", "40", timeout=120)
    assert rec.returncode == 0, rec.stderr
    out = cli("execute", str(path), "--dry-run")
    assert out.returncode == 0, out.stderr
    blocks = out.stdout.split("\n")
    for st in load_graph(path).stages:
        start = next(i for i, line in enumerate(blocks) if f". {st.id} [{st.kind}]" in line)
        block = "\n".join(blocks[start:start + 4])
        p = st.params
        if st.kind in GENERATES:
            v = p.vllm
            assert (f"vllm: colocate, gpu_memory_utilization {v.gpu_memory_utilization:g}, tensor_parallel_size "
                    f"{v.tensor_parallel_size}, sleep mode {'on' if v.enable_sleep_mode else 'off'}") in block, block
        if st.kind in TRAINS:
            assert f"learning_rate {p.learning_rate:g}" in block
            assert ("LoRA (merged on save)" if p.lora else "full fine-tuning") in block
    assert "LoRA (merged on save)" in out.stdout and not s2d_home.exists()
