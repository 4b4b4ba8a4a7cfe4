"""Checkpoint and resume through the real CLI: a run interrupted after its step-2 checkpoint and resumed
with ``--resume`` matches an uninterrupted run's data order and step count, trains no question twice,
and its engines generate from the checkpoint's weights."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

ARGS = ["train", "-c", "configs/tiny_cpu.yaml", "total_steps=3", "data.questions_per_step=2",
        "rollout.max_new_tokens=8", "learner.lr=1e-4", "output.save_final=false", "logging.ray_metrics=false"]


def _env():
    return {**os.environ, "VLLM_CONFIGURE_LOGGING": "0", "PYTHONPATH": str(ROOT)}


def _grpo(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _records(out, name):
    return [json.loads(line) for line in (out / name).read_text().splitlines() if line.strip()]


def _uids_by_step(out):
    by_step = {}
    for r in _records(out, "samples.jsonl"):
        by_step.setdefault(r["step"], []).append(r["uid"])
    return by_step


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tiny_model, tmp_path):
    whole = tmp_path / "whole"
    proc = _grpo(*ARGS, f"model.path={tiny_model}", f"output.dir={whole}", "output.checkpoint_every=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (whole / "checkpoints").exists()  # checkpoint_every=0: none at all

    # the same run, checkpointing every step, interrupted once its step-2 checkpoint is complete
    cut = tmp_path / "cut"
    run = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *ARGS, f"model.path={tiny_model}",
                            f"output.dir={cut}", "output.checkpoint_every=1", "output.keep_last=1"],
                           cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    ckpts = cut / "checkpoints"
    # step 2's checkpoint published and the older one pruned (keep_last=1)
    while not ((ckpts / "step_2" / "state.json").exists() and not (ckpts / "step_1").exists()):
        assert run.poll() is None, run.stdout.read()[-3000:]
        assert time.time() < deadline, "no step-2 checkpoint within 10 minutes"
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)  # mid step 3 (or just before it)
    run.wait(timeout=120)
    assert sorted(os.listdir(cut / "checkpoints")) == ["step_2"]  # keep_last=1 pruned step_1

    proc = _grpo("train", "-c", str(cut / "config.yaml"), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "continuing at step 3" in proc.stdout

    # same questions in the same order, each step exactly once; the step count matches
    assert _uids_by_step(cut) == _uids_by_step(whole)
    assert sorted(_uids_by_step(whole)) == [1, 2, 3]
    steps = [r["step"] for r in _records(cut, "metrics.jsonl")]
    assert steps == [1, 2, 3]
    resumed = _records(cut, "metrics.jsonl")[-1]
    assert resumed["policy_version"] == 3 and resumed["rollout/engine_version_min"] == 3
    assert resumed["data/position"] == _records(whole, "metrics.jsonl")[-1]["data/position"]
    # the engines sampled step 3 from the checkpoint's weights (stale ones would disagree with the learner)
    assert resumed["rollout/logprob_abs_diff"] < 2e-3
    assert resumed["loss/kl"] > 0  # the learner resumed the trained policy, not the initial one
    assert sorted(os.listdir(cut / "checkpoints")) == ["step_3"]  # the last step always checkpoints


def test_resume_without_a_checkpoint_is_one_clear_line(tiny_model, tmp_path):
    proc = _grpo(*ARGS, f"model.path={tiny_model}", f"output.dir={tmp_path / 'empty'}", "--resume", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --resume: no checkpoint in")
