"""The memory plan against hand-computed bytes, its refusals, and `grpo plan` on the shipped 7B config."""
import json
import subprocess
import sys

import pytest

from orchestrator.config import load_config
from orchestrator.memory_plan import GIB, ModelShape, PlanError, check_plan, engine_bytes, learner_rank_bytes, make_plan
from tests.conftest import ROOT

SHAPE = ModelShape(params=1000, layers=2, hidden=8, heads=2, kv_heads=1, head_dim=4, vocab=50)


def _cfg(*overrides):
    return load_config(None, ["model.dtype=bfloat16", "learner.num_gpus=1", "learner.num_ranks=4", "learner.zero_stage=3",
                              "learner.micro_batch_size=2", "learner.gradient_checkpointing=true",
                              "data.questions_per_step=8", "rollout.group_size=4", "rollout.max_new_tokens=6",
                              "rollout.num_workers=2", "rollout.num_gpus_per_worker=2", "rollout.tensor_parallel_size=2",
                              "rollout.dtype=bfloat16", *overrides])


def test_learner_rank_bytes_by_hand():
    parts = learner_rank_bytes(SHAPE, _cfg(), max_len=16)
    # bf16 mixed precision: 2 + 2 + 12 bytes per parameter, all three split over 4 ranks under ZeRO-3
    assert parts["weights"] == 500 and parts["gradients"] == 500 and parts["optimizer"] == 3000
    # checkpointing: each layer's input (2 layers x s16 x b2 x h8 x 2 bytes) + one layer recomputed (16*2*8*34)
    assert parts["activations"] == 2 * 16 * 2 * 8 * 2 + 16 * 2 * 8 * 34 == 9728
    # logits and their gradient (b2 x s16 x V50 x 2 bytes, twice) + one row's fp32 log-softmax (16 x 50 x 4)
    assert parts["logits"] == 6400 + 3200
    assert parts["reference"] == 2000  # a full bf16 copy on every rank
    assert parts["runtime"] == GIB


def test_zero_stages_partition_in_order_and_fp32_costs_16_bytes():
    one = learner_rank_bytes(SHAPE, _cfg("learner.zero_stage=1", "model.dtype=float32"), max_len=16)
    assert (one["weights"], one["gradients"], one["optimizer"]) == (4000, 4000, 2000)  # fp32: 4 + 4 + 8, Adam split
    two = learner_rank_bytes(SHAPE, _cfg("learner.zero_stage=2"), max_len=16)
    assert (two["weights"], two["gradients"], two["optimizer"]) == (2000, 500, 3000)
    plain = learner_rank_bytes(SHAPE, _cfg("learner.gradient_checkpointing=false", "learner.attn_implementation=eager"),
                               max_len=16)
    assert plain["activations"] == 2 * (16 * 2 * 8 * 34 + 5 * 2 * 16 * 16 * 2)  # every layer, eager attention scores


def test_engine_bytes_by_hand():
    parts = engine_bytes(SHAPE, _cfg(), prompt_len=10)
    assert parts["weights"] == 1000  # 1000 bf16 parameters over tensor-parallel 2
    # K and V: 2 x 2 layers x 1 kv head x 4 dims x 2 bytes / tp 2 = 16 bytes a token; a group: 4 x 16 tokens
    assert parts["kv_cache_group"] == 4 * 16 * 16
    assert parts["kv_cache_all_groups"] == 4 * 4 * 16 * 16  # 8 questions over 2 engines: 4 groups at once


def test_a_learner_that_cannot_fit_is_refused_naming_the_role_and_the_shortfall():
    plan = make_plan(_cfg("resources.gpu_memory_gb=0.5"), SHAPE, prompt_len=10)
    need = plan["roles"]["learner"]["need_gb"]
    assert need == pytest.approx(1 + (500 + 500 + 3000 + 9728 + 9600 + 2000) / GIB)
    with pytest.raises(PlanError, match=r"a learner rank needs 1\.0 GiB per GPU, which has 0\.5 GiB: short by 0\.5 GiB "
                                        r"\(runtime 1\.0, activations 0\.0, logits 0\.0"):
        check_plan(plan)
    roomy = make_plan(_cfg("resources.gpu_memory_gb=2"), SHAPE, prompt_len=10)
    check_plan(roomy)
    with pytest.raises(PlanError, match=r"the roles on CPU need .* GiB together, this machine has 0\.0 GiB"):
        check_plan(make_plan(_cfg("learner.num_gpus=0", "rollout.num_gpus_per_worker=0"), SHAPE, 10), host_ram_gb=0.001)


def _grpo_plan(*args):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "plan", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_the_shipped_7b_config_fits_eight_ranks_and_not_one():
    """DeepSeekMath 7B (its shipped architecture: no hub here): AdamW alone is 77 GiB on one rank."""
    proc = _grpo_plan("-c", "configs/deepseekmath_7b.yaml")
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout)
    assert plan["model_params"] == 6_910_365_696
    learner = plan["roles"]["learner"]
    assert learner["count"] == 8 and learner["fits"] and 36 < learner["need_gb"] < 37
    assert plan["roles"]["rollout"]["fits"]
    proc = _grpo_plan("-c", "configs/deepseekmath_7b.yaml", "learner.num_ranks=1")
    assert proc.returncode == 1
    assert "error: memory plan: a learner rank needs 126.5 GiB per GPU, which has 80.0 GiB: short by 46.5 GiB" in proc.stderr


def test_preflight_refuses_a_config_that_cannot_fit(tiny_model):
    from orchestrator.preflight import PreflightError, preflight

    cfg = load_config("configs/tiny_cpu.yaml", [f"model.path={tiny_model}", "learner.num_gpus=1",
                                               "resources.gpu_memory_gb=2"])
    with pytest.raises(PreflightError, match=r"memory plan: a learner rank needs 3\.\d GiB per GPU, which has 2\.0 GiB"):
        preflight(cfg)
    preflight(load_config("configs/tiny_cpu.yaml", [f"model.path={tiny_model}"]))  # the tiny run fits this machine
