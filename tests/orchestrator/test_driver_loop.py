"""The driver's loop on a real Ray with stand-in engines and learner (no vLLM, no DeepSpeed): data
order, off-policy lag, checkpoint contents and resume, in seconds."""
import json

import pytest
import ray

import learner.actor
import rollout.group
from orchestrator.checkpoint import list_checkpoints, read_state
from orchestrator.config import load_config
from orchestrator.data import QuestionSampler, load_problems
from orchestrator.driver import Trainer
from tests.fakes.actors import FakeEngine, FakeLearner


@pytest.fixture
def fakes(monkeypatch, tiny_model):
    monkeypatch.setattr(rollout.group, "RolloutEngine", FakeEngine)
    monkeypatch.setattr(learner.actor, "LearnerWorker", FakeLearner)
    yield tiny_model
    ray.shutdown()


def _cfg(model, out, *overrides):
    return load_config("configs/tiny_cpu.yaml", [
        f"model.path={model}", f"output.dir={out}", "total_steps=4", "data.questions_per_step=2",
        "rollout.group_size=2", "learner.micro_batch_size=2", "resources.num_cpus=4", "output.save_final=false",
        "logging.ray_metrics=false", "logging.dashboard=false", *overrides])


def _run(cfg):
    trainer = Trainer(cfg)
    try:
        trainer.train()
        seen = ray.get(trainer.learner.ranks[0].batches_seen.remote())
    finally:
        trainer.shutdown()
    records = [json.loads(line) for line in open(f"{cfg.output.dir}/metrics.jsonl")]
    samples = [json.loads(line) for line in open(f"{cfg.output.dir}/samples.jsonl")]
    return records, samples, seen


def _expected_uids(cfg, steps):
    sampler = QuestionSampler(load_problems(cfg.data, "train", cfg.seed), cfg.data.questions_per_step, cfg.seed)
    return [[p.uid for p in sampler.next_batch()] for _ in range(steps)]


def _uids(samples):
    by_step = {}
    for s in samples:
        by_step.setdefault(s["step"], []).append(s["uid"])
    return [by_step[k] for k in sorted(by_step)]


def test_on_policy_loop_takes_batches_in_sampler_order(fakes, tmp_path):
    cfg = _cfg(fakes, tmp_path, "output.checkpoint_every=0")
    records, samples, seen = _run(cfg)
    assert _uids(samples) == _expected_uids(cfg, 4)
    assert seen == [[0], [1], [2], [3]]  # every step sampled by the policy it updates
    assert [r["rollout/policy_lag"] for r in records] == [0, 0, 0, 0]
    assert [r["rollout/engine_version_min"] for r in records] == [1, 2, 3, 4]


def test_off_policy_lag_generates_the_next_step_during_the_update(fakes, tmp_path):
    cfg = _cfg(fakes, tmp_path, "algorithm.off_policy_lag=1", "algorithm.old_logprobs=sampler", "output.checkpoint_every=2")
    records, samples, seen = _run(cfg)
    assert _uids(samples) == _expected_uids(cfg, 4)  # same data order as on-policy
    assert seen == [[0], [0], [1], [2]]  # step k>1 learns from samples of policy k-2: one update old
    assert [r["rollout/policy_lag"] for r in records] == [0, 1, 1, 1]
    assert all("time/prefetch_generate_s" in r for r in records[:3]) and "time/prefetch_generate_s" not in records[3]
    # the step-2 checkpoint does not count step 3's prefetched batch as consumed
    state = read_state(dict(list_checkpoints(str(tmp_path)))[2])
    assert state["sampler"]["position"] == 2 * 2


def test_resume_continues_with_the_next_batch(fakes, tmp_path):
    cfg = _cfg(fakes, tmp_path, "total_steps=2", "output.checkpoint_every=1")
    _run(cfg)
    ray.shutdown()
    resumed = _cfg(fakes, tmp_path, "total_steps=4", "output.checkpoint_every=1", "output.resume=auto")
    records, samples, seen = _run(resumed)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert _uids(samples) == _expected_uids(cfg, 4)
    assert seen == [[0], [1], [2], [3]]  # the learner's restored history continues without a gap
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [3, 4]


def test_reward_overlap_gives_the_same_scored_batches_as_scoring_after_generation(fakes, tmp_path):
    runs = {}
    for chunk in (0, 1):  # 0: score the step after generation; 1: score each sample as it arrives
        cfg = _cfg(fakes, tmp_path / f"overlap{chunk}", "total_steps=2", "output.checkpoint_every=0",
                   f"reward.overlap_samples={chunk}")
        records, samples, seen = _run(cfg)
        ray.shutdown()
        runs[chunk] = records, [(s["step"], s["uid"], s["reward"], s["response"]) for s in samples], seen
        assert all(r["time/reward_wait_s"] <= r["time/step_s"] for r in records)
    assert runs[1][1] == runs[0][1] and runs[1][2] == runs[0][2] == [[0], [1]]
    assert [r["reward/mean"] for r in runs[1][0]] == [r["reward/mean"] for r in runs[0][0]]


@pytest.mark.parametrize("overrides, expected", [
    (("learner.reference_overlap=true",), [1.0, 1.0]),  # every sample's reference logprobs precomputed
    ((), [0.0, 0.0]),  # default on a CPU learner: off
    (("learner.reference_overlap=true", "reward.overlap_samples=0"), [0.0, 0.0]),  # no chunks streamed
    (("learner.reference_overlap=true", "algorithm.kl_coef=0"), [0.0, 0.0]),  # no reference term
    (("learner.reference_overlap=true", "algorithm.off_policy_lag=1", "algorithm.old_logprobs=sampler"),
     [1.0, 0.0]),  # step 2 was prefetched whole
])
def test_reference_logprobs_are_requested_per_chunk_during_generation(fakes, tmp_path, overrides, expected):
    cfg = _cfg(fakes, tmp_path, "total_steps=2", "output.checkpoint_every=0", "reward.overlap_samples=1", *overrides)
    records, _, _ = _run(cfg)
    assert [r["learner/reference_precomputed_frac"] for r in records] == expected
    assert [("time/reference_wait_s" in r) for r in records] == [frac > 0 for frac in expected]

@pytest.mark.parametrize("overrides, expected", [
    ((), False), (("learner.num_gpus=1",), True), (("learner.num_gpus=1", "learner.reference_overlap=false"), False),
    (("learner.reference_overlap=true",), True), (("learner.num_gpus=1", "algorithm.kl_coef=0"), False),
])
def test_reference_overlap_default_follows_the_learner_device(overrides, expected):
    from orchestrator.driver import reference_overlap

    assert reference_overlap(load_config("configs/tiny_cpu.yaml", list(overrides))) is expected
