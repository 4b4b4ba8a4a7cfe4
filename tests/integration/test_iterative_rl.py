"""Iterative RL end to end through the CLI, on the tiny configs: ORM and PRM, two iterations each.

Every step: r_phi is retrained on the step's samples with 10% replay, hot-swapped into the reward
workers (the run checks the workers serve the new version), and the reference is reset to the
policy (the learner reports max |reference - policy| right after the reset).
"""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SHARED_DATA

pytestmark = pytest.mark.slow


def _train(config, out, *overrides):
    env = {**os.environ, "VLLM_CONFIGURE_LOGGING": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", "-c", config, f"output.dir={out}", "output.checkpoint_every=0", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _check_iterations(records, out, kind):
    assert [r["step"] for r in records] == [1, 2]
    assert [r["iterative/iteration"] for r in records] == [1, 2]
    assert [r[f"{kind}/version"] for r in records] == [1, 2]
    assert [r[f"{kind}/serving_version"] for r in records] == [1, 2]
    assert [r["iterative/reference_max_diff"] for r in records] == [0.0, 0.0]
    for r in records:
        mixed = r[f"{kind}/new_samples"] + r[f"{kind}/replay_samples"]
        assert r[f"{kind}/replay_samples"] >= 1
        assert abs(r[f"{kind}/replay_samples"] - 0.1 * mixed) <= 0.5, r  # 10% of the mix, within rounding
        assert r[f"{kind}/replay_fraction"] == pytest.approx(r[f"{kind}/replay_samples"] / mixed)
        assert 0.0 <= r["reward/accuracy"] <= 1.0  # the verifier's view, next to the learned reward
    first = records[0]
    assert f"start/{kind}/heldout_accuracy" in first
    assert first[f"start/{kind}/loss_first_epoch"] > 0
    # the reference was reset after step 1's update, so step 2 starts with KL exactly 0 again
    assert records[1]["loss/kl"] == pytest.approx(0.0, abs=1e-6)
    # the buffer holds the start-up set plus each iteration's new samples
    assert records[1][f"{kind}/buffer_size"] == records[0][f"{kind}/buffer_size"] + records[1][f"{kind}/new_samples"]
    for it in (0, 1, 2):
        with open(out / "reward_models" / kind / f"iter_{it}" / "config.json") as f:
            assert json.load(f)["grpo_reward_kind"] == kind
    assert (out / "final" / "model.safetensors").exists()


def test_orm_two_iterations_and_resume(tiny_model, tmp_path):
    out = tmp_path / "orm"
    records = _train("configs/tiny_orm.yaml", out, f"model.path={tiny_model}", "data.questions_per_step=2",
                     "reward_model.bootstrap_questions=8", "output.checkpoint_every=1")
    _check_iterations(records, out, "orm")
    for r in records:  # rule_weight 0: the policy's reward is r_phi's alone
        assert r["reward/mean"] == pytest.approx(r["reward/orm_mean"], abs=1e-6)
        assert 0.0 <= r["reward/orm_rule_agreement"] <= 1.0

    # resumed from step 1, r_phi's trainer continues from its saved optimizer state and counters: step 2's
    # round adds its steps to step 1's count (a fresh trainer would count its own round only, fewer)
    trainer_state = out / "checkpoints" / "step_1" / "reward_model_trainers" / "orm"
    assert (trainer_state / "state").is_dir(), sorted(os.listdir(out / "checkpoints" / "step_1"))
    resumed = _train(str(out / "config.yaml"), out, f"output.resume={out / 'checkpoints' / 'step_1'}")
    assert [r["step"] for r in resumed] == [1, 2] and resumed[0] == records[0]  # step 1's record kept as it was
    round_steps = records[1]["orm/optimizer_steps"] - records[0]["orm/optimizer_steps"]
    assert 0 < round_steps < records[0]["orm/optimizer_steps"]
    # same questions, same replay draw (the buffer's RNG state is in the checkpoint), so the same round size
    assert resumed[1]["orm/optimizer_steps"] == records[1]["orm/optimizer_steps"]


def test_prm_two_iterations(tiny_model, tmp_path):
    out = tmp_path / "prm"
    records = _train("configs/tiny_prm.yaml", out, f"model.path={tiny_model}",
                     f"data.train_file={SHARED_DATA / 'gsm8k/train.jsonl'}")
    _check_iterations(records, out, "prm")
    assert all(0.0 <= r["reward/prm_step_mean"] <= 1.0 for r in records)
    samples = [json.loads(line) for line in (out / "reward_models/prm/replay/samples.jsonl").read_text().splitlines()]
    assert samples and all(len(s["step_labels"]) == len(s["steps"]) for s in samples)
    assert any(len(s["steps"]) > 1 for s in samples), "GSM8K answers should have several steps"
