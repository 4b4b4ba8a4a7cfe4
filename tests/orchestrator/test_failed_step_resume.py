"""A step that fails in the pool's reconcile (the engines' restart budget spent) checkpoints the data
position of the last completed step: the resumed run trains every question exactly once (stand-in
engines and learner on a real Ray, in seconds)."""
import json

import pytest
import ray

from orchestrator.checkpoint import list_checkpoints
from orchestrator.driver import Trainer, TrainingError
from tests.orchestrator.test_driver_loop import _cfg, _expected_uids, _uids, fakes  # noqa: F401 - the fixture


class EngineDiesInStep2(Trainer):
    """One of the two engines dies while step 2 generates; its work is redone on the other, and step 3's
    reconcile finds no replacement left (rollout.max_restarts=0)."""

    def run_step(self, step):
        if step == 2:
            ray.get(self.rollout.engines["rollout-engine-0"].die_after_chunks.remote(0))
        return super().run_step(step)


def test_budget_spent_in_reconcile_then_resume_trains_each_question_once(fakes, tmp_path):  # noqa: F811
    overrides = ["rollout.num_workers=2", "rollout.max_restarts=0", "output.checkpoint_every=0",
                 "resources.num_cpus=6", "reward.overlap_samples=1"]
    cfg = _cfg(fakes, tmp_path, *overrides)
    trainer = EngineDiesInStep2(cfg)
    try:
        with pytest.raises(TrainingError, match="step 3 failed: .*replacements are used up"):
            trainer.train()
    finally:
        trainer.shutdown()
        ray.shutdown()
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [2]

    resumed = Trainer(_cfg(fakes, tmp_path, *overrides, "output.resume=auto"))
    try:
        resumed.train()
    finally:
        resumed.shutdown()
    samples = [json.loads(line) for line in open(tmp_path / "samples.jsonl")]
    assert _uids(samples) == _expected_uids(cfg, 4)  # steps 1-4, each question once, in order
    assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_a_resume_from_an_older_checkpoint_continues_one_timeline(fakes, tmp_path):  # noqa: F811
    """Run to step 4, resume from step 2 to step 3: the old step_3/step_4 go aside, and the next
    --resume (auto) continues the new step 3, not the abandoned step 4."""
    from orchestrator.driver import Trainer as Plain

    keep = ["output.checkpoint_every=1", "output.keep_last=5"]
    first = Plain(_cfg(fakes, tmp_path, *keep))
    try:
        first.train()
    finally:
        first.shutdown()
    branch = Plain(_cfg(fakes, tmp_path, *keep, "total_steps=3", f"output.resume={tmp_path}/checkpoints/step_2"))
    try:
        branch.train()
    finally:
        branch.shutdown()
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [1, 2, 3]
    (aside,) = [d for d in (tmp_path / "checkpoints").iterdir() if d.name.startswith("abandoned-after-step_2-")]
    assert sorted(p.name for p in aside.iterdir()) == ["step_3", "step_4"]
    last = Plain(_cfg(fakes, tmp_path, *keep, "total_steps=4", "output.resume=auto"))
    try:
        last.train()
    finally:
        last.shutdown()
    assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


class SyncFailsAtStep2(Trainer):
    """The weight sync after step 2's update misses its deadline."""

    def sync_weights(self, version, names=None):
        if version == 2 and names is None:
            raise TrainingError("weight sync: rollout-engine-0 did not answer within 1.0s")
        return super().sync_weights(version, names)


def test_a_failure_after_the_update_checkpoints_the_trained_step(fakes, tmp_path):  # noqa: F811
    """Step 2 is trained when its sync fails: the run keeps step 2's record and samples and checkpoints
    the state after it (not only a Hugging Face policy), and the resume continues at step 3."""
    cfg = _cfg(fakes, tmp_path, "output.checkpoint_every=0")
    trainer = SyncFailsAtStep2(cfg)
    try:
        with pytest.raises(TrainingError, match=r"step 2 failed: .*step 2 was trained: state after it checkpointed"):
            trainer.train()
    finally:
        trainer.shutdown()
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [2]
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2] and records[1]["step/failed_after_update"] == 1.0
    resumed = Trainer(_cfg(fakes, tmp_path, "output.checkpoint_every=0", "output.resume=auto"))
    try:
        resumed.train()
    finally:
        resumed.shutdown()
    samples = [json.loads(line) for line in open(tmp_path / "samples.jsonl")]
    assert _uids(samples) == _expected_uids(cfg, 4)
    assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
