"""Faults during a real run: a rollout engine and a reward worker killed in the middle of training.
The step goes on with the engines that remain, the dead engine is replaced and gets the current
weights before it generates, the reward worker is restarted and its shard rescored."""
import json
import threading
import time

import pytest

from orchestrator.config import load_config

pytestmark = pytest.mark.slow


def test_killed_engine_and_reward_worker_are_replaced_and_the_run_continues(tiny_model, tmp_path):
    import ray

    from orchestrator.driver import Trainer

    ray.shutdown()
    cfg = load_config("configs/tiny_cpu.yaml", [
        f"model.path={tiny_model}", f"output.dir={tmp_path}", "total_steps=3", "data.questions_per_step=2",
        "rollout.num_workers=2", "rollout.gpu_memory_utilization=0.1", "rollout.max_new_tokens=16",
        "reward.num_workers=2", "learner.lr=1e-4", "learner.num_cpus=1", "output.save_final=false",
        "output.checkpoint_every=0", "logging.ray_metrics=false"])
    trainer = Trainer(cfg)
    killed = {}

    def kill_during_step_2():
        metrics = tmp_path / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().strip()):
            time.sleep(0.05)
        killed["engine"] = "rollout-engine-1"
        ray.kill(trainer.rollout.engines["rollout-engine-1"], no_restart=True)
        killed["reward"] = trainer.rewards.names[1]
        ray.kill(trainer.rewards.workers[1], no_restart=True)

    killer = threading.Thread(target=kill_during_step_2, daemon=True)
    killer.start()
    try:
        trainer.train()
        names, restarts_left = trainer.rollout.names, trainer.rollout.restarts_left
    finally:
        trainer.shutdown()
        ray.shutdown()
    killer.join(timeout=5)
    assert killed == {"engine": "rollout-engine-1", "reward": "reward-worker-1"}

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    # step 2 lost an engine and still produced a full batch on the other one
    assert records[1]["rollout/engines_lost"] == 1 and records[1]["rollout/num_engines"] == 1
    # step 3: a replacement joined with the current weights (every engine at version 3 after the sync;
    # its samples agree with the learner, which stale weights would not)
    assert records[2]["rollout/num_engines"] == 2 and records[2]["rollout/engines_lost"] == 0
    assert names == ["rollout-engine-0", "rollout-engine-2"] and restarts_left == cfg.rollout.max_restarts - 1
    assert records[2]["rollout/engine_version_min"] == 3
    assert "worker/rollout-engine-2/tokens_per_s" in records[2]
    assert all(r["rollout/logprob_abs_diff"] < 2e-3 for r in records), [r["rollout/logprob_abs_diff"] for r in records]
    # the reward worker was restarted once and its shard rescored: every sample has a reward
    assert records[-1]["reward/worker_restarts"] == 1
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 2


def test_a_failed_run_checkpoints_what_it_trained_and_says_how_to_resume(tiny_model, tmp_path):
    """The only engine dies after step 1 with no restarts allowed: step 2 fails before its update, so
    the state after step 1 becomes a checkpoint (with step 2's questions not consumed) and the error
    ends with the resume command."""
    import ray

    from orchestrator.checkpoint import list_checkpoints, read_state
    from orchestrator.driver import Trainer, TrainingError

    ray.shutdown()
    cfg = load_config("configs/tiny_cpu.yaml", [
        f"model.path={tiny_model}", f"output.dir={tmp_path}", "total_steps=3", "data.questions_per_step=2",
        "rollout.max_new_tokens=8", "rollout.max_restarts=0", "output.checkpoint_every=2",
        "output.save_final=false", "logging.ray_metrics=false"])
    trainer = Trainer(cfg)

    def kill_after_step_1():
        metrics = tmp_path / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().strip()):
            time.sleep(0.05)
        ray.kill(trainer.rollout.engines["rollout-engine-0"], no_restart=True)

    threading.Thread(target=kill_after_step_1, daemon=True).start()
    try:
        with pytest.raises(TrainingError) as err:
            trainer.train()
    finally:
        trainer.shutdown()
        ray.shutdown()
    msg = str(err.value)
    assert msg.startswith("step 2 failed:") and "rollout-engine-0" in msg, msg
    assert f"state after step 1 checkpointed to {tmp_path}/checkpoints/step_1" in msg
    assert msg.splitlines()[-1] == f"to resume: grpo train -c {tmp_path}/config.yaml --resume   (continues after step 1)"
    (step, path), = list_checkpoints(str(tmp_path))
    state = read_state(path)
    assert step == 1 and state["policy_version"] == 1
    assert state["sampler"]["position"] == 2  # step 2's questions are asked again after the resume
