"""Cost and memory model: formulas, strategies, and calibration overrides."""

import json

import pytest

from s2d_plan.predict import costs
from s2d_plan.predict.calibration import load_calibration
from s2d_plan.predict.costs import CostConstants, train_cost, train_memory
from s2d_plan.plan.registry import gpu_info, model_info

H100 = gpu_info("H100-80GB")
RTX = gpu_info("RTX-4090")
Q17, Q8, Q14, Q32 = (model_info(f"Qwen/Qwen3-{s}") for s in ("1.7B", "8B", "14B", "32B"))


def test_memory_picks_the_leanest_strategy_that_fits():
    assert train_memory(Q17, H100, 8, 1280)[0] == "single"  # 27.5 GB of AdamW state fits one GPU
    assert train_memory(Q8, H100, 8, 1280)[0] == "fsdp"  # 131 GB does not; sharded over 8 it does
    assert train_memory(Q8, H100, 1, 1280)[0] == "lora"  # one GPU: only frozen bf16 weights fit
    strategy, peak, need = train_memory(Q32, RTX, 1, 1280)
    assert strategy == "infeasible" and need > RTX.memory_gb


def test_full_finetuning_costs_16_bytes_per_parameter_before_sharding():
    c = CostConstants()
    _, single, _ = train_memory(Q8, gpu_info("H200"), 1, 1280, c=c, allow_lora=False)
    assert single >= 16 * Q8.params_b  # GB, since params_b is in billions
    _, sharded, _ = train_memory(Q8, H100, 8, 1280, c=c)
    assert sharded < single / 4


def test_training_time_is_six_n_t_over_peak_times_mfu():
    c = CostConstants(stage_startup_s=0)
    tokens = 1e9
    est = train_cost(Q8, H100, 8, tokens, c=c)
    expected = 6 * Q8.params_b * 1e9 * tokens / (8 * H100.bf16_tflops * 1e12 * c.mfu_train) * 8 / 3600
    assert est.gpu_hours == pytest.approx(expected)
    with_teacher = train_cost(Q17, H100, 8, tokens, extra_forward=[Q8], c=c)
    alone = train_cost(Q17, H100, 8, tokens, c=c)
    extra = 2 * Q8.params_b * 1e9 * tokens / (8 * H100.bf16_tflops * 1e12 * c.mfu_train) * 8 / 3600
    assert with_teacher.gpu_hours - alone.gpu_hours == pytest.approx(extra)


def test_generation_is_bandwidth_bound_and_scales_with_sequences():
    one = costs.generation(Q8, H100, 8, 100_000, 256, 1024)
    two = costs.generation(Q8, H100, 8, 200_000, 256, 1024)
    assert two.gpu_hours == pytest.approx(2 * one.gpu_hours, rel=0.02)
    slow = costs.generation(Q8, gpu_info("A100-80GB"), 8, 100_000, 256, 1024)
    assert slow.gpu_hours > one.gpu_hours  # less bandwidth, same work
    big = costs.generation(Q32, RTX, 4, 1000, 256, 1024)
    assert big.fits and big.strategy == "tp4"  # 66 GB of weights need four 24 GB cards


def test_every_stage_kind_has_a_cost():
    kinds = [
        costs.grpo_cost(Q8, H100, 8, 15000, 8, 256, 1024, 64),
        costs.rollout_cost(Q8, H100, 8, 40000, 256, 1024),
        costs.fkl_cost(Q17, Q8, H100, 8, 40000, 1, 256, 1024, token_level=True),
        costs.opd_cost(Q17, Q8, H100, 8, 40000, 256, 1024, 64),
        costs.eval_cost(Q17, H100, 8, 500, 4, 256, 1024),
        costs.probe_cost([Q17], H100, 8, 512, 8, 256, 1024),
    ]
    for est in kinds:
        assert est.fits and 0 < est.gpu_hours < 200 and 0 < est.peak_mem_gb <= H100.memory_gb
    seq = costs.fkl_cost(Q17, Q8, H100, 8, 40000, 1, 256, 1024, token_level=False)
    assert seq.gpu_hours < kinds[2].gpu_hours  # no teacher forward at sequence level


def test_calibration_file_overrides_constants(tmp_path):
    assert load_calibration(tmp_path).costs == CostConstants()
    (tmp_path / "calibration.json").write_text(json.dumps({"costs": {"mfu_train": 0.45, "bogus": 1}}))
    c = load_calibration(tmp_path).costs
    assert c.mfu_train == 0.45 and c.gen_bandwidth_eff == CostConstants().gen_bandwidth_eff
    (tmp_path / "calibration.json").write_text("not json")
    assert load_calibration(tmp_path).costs == CostConstants()
