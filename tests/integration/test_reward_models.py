"""Learned reward models with real actors: DeepSpeed training on tiny-model samples, serving, hot-swap.

The samples are the tiny model's own answers to 1-digit sums, sampled by a vLLM engine and labelled
by the rule verifier (about 20% right).
"""
import math

import pytest
import ray

from orchestrator.config import load_config
from orchestrator.types import Episode, Problem, RMSample
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

QUESTIONS, G = 64, 8


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "VLLM_CONFIGURE_LOGGING": "0"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cfg(tiny_model):
    return load_config(str(ROOT / "configs/tiny_orm.yaml"), [
        f"model.path={tiny_model}", "reward_model.epochs=1", "reward_model.num_cpus=2", "reward.model_batch_size=8"])


@pytest.fixture(scope="module")
def labelled(cluster, tiny_model):
    from orchestrator.data import encode_prompts, make_arithmetic
    from reward.verifiers import VERIFIERS
    from rollout.engine import RolloutEngine, SamplingSpec
    from transformers import AutoTokenizer

    problems, _ = make_arithmetic(1, 500, 0, seed=1)
    problems = problems[:QUESTIONS]
    ids = encode_prompts(AutoTokenizer.from_pretrained(tiny_model), problems, None, 512)
    engine = ray.remote(num_cpus=1)(RolloutEngine).remote(
        tiny_model, dtype="float32", max_model_len=128, gpu_memory_utilization=0.25, seed=0)
    episodes, _ = ray.get(engine.generate.remote([(i, p, x) for i, (p, x) in enumerate(zip(problems, ids))],
                                                 SamplingSpec(n=G, max_new_tokens=12)))
    ray.kill(engine)
    return [RMSample(e.problem, (e.response_text,), float(VERIFIERS["arithmetic"](e.response_text, e.problem.gold)))
            for e in episodes]


def _entropy(p):
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


@pytest.fixture(scope="module")
def trained(cluster, cfg, labelled, tiny_model, tmp_path_factory):
    from learner.actor import RewardModelLearner
    from orchestrator.iterative import split_heldout

    train, held = split_heldout(labelled, 0.25, seed=0)
    learner = ray.remote(RewardModelLearner).options(num_cpus=2).remote(cfg, "orm", tiny_model)
    metrics = ray.get(learner.train.remote(train, held))
    print("reward-model training:", metrics)
    path = ray.get(learner.save.remote(str(tmp_path_factory.mktemp("rm") / "orm")))
    ray.kill(learner)
    return metrics, path, held


def test_orm_training_reduces_loss_and_beats_chance(labelled, trained):
    metrics, path, held = trained
    positives = sum(s.label for s in held) / len(held)
    assert 0 < positives < 1, "the held-out slice needs both right and wrong answers"
    assert metrics["rm/heldout_loss"] < metrics["rm/heldout_loss_before"]  # the new head starts near chance
    # chance ranks a right answer above a wrong one half the time
    assert metrics["rm/heldout_auc"] > 0.6, metrics  # standard error here is about 0.05
    # and no constant guess of P(correct) does better than the entropy of the base rate
    assert metrics["rm/heldout_loss"] < _entropy(positives), (metrics, positives)


def _episodes(samples):
    return [Episode(i // G, s.problem, (1,), (2,), (0.0,), s.steps[0], "stop", 0) for i, s in enumerate(samples)]


def test_swapped_reward_model_is_the_one_scoring(cluster, cfg, trained, tiny_model, tmp_path):
    import torch

    from reward.model import RewardModel, load_backbone, save_reward_model
    from reward.pool import RewardPool

    _, trained_path, held = trained
    torch.manual_seed(123)
    fresh_model, tok = load_backbone(tiny_model, "orm")
    fresh = save_reward_model(fresh_model, tok, str(tmp_path / "fresh"))
    pool = RewardPool.from_config(cfg, models={"orm": fresh}, name_prefix="swap-reward-worker")
    try:
        pool.ready(300)
        episodes = _episodes(held[:16])
        before, stats = pool.score(episodes, timeout_s=300)
        pool.swap_model("orm", trained_path, 1, 300)
        assert pool.model_versions(60) == [{"orm": {"path": trained_path, "version": 1}}]
        after, stats = pool.score(episodes, timeout_s=300)
    finally:
        pool.shutdown()
    direct = RewardModel(trained_path, "orm", batch_size=8).score([(e.problem, (e.response_text,)) for e in episodes])
    assert [e.reward for e in after] == pytest.approx([d[-1] for d in direct], abs=1e-4)  # rule_weight is 0
    assert max(abs(a.reward - b.reward) for a, b in zip(after, before)) > 1e-3
    # the verifier's verdict rides along, for the reward-hacking check
    assert [e.correct for e in after] == [s.label == 1.0 for s in held[:16]]
    assert 0.0 <= stats["reward/orm_rule_agreement"] <= 1.0 and "reward/rule_mean" in stats


def test_reward_model_that_fails_to_load_is_named(cluster, cfg, tmp_path):
    from reward.pool import RewardError, RewardPool

    missing = str(tmp_path / "no-such-rm")
    pool = RewardPool.from_config(cfg, models={"orm": missing}, name_prefix="broken-reward-worker")
    try:
        with pytest.raises(RewardError, match="no-such-rm"):
            pool.ready(300)
    finally:
        pool.shutdown()
    unloaded = RewardPool.from_config(cfg, name_prefix="empty-reward-worker")
    try:
        with pytest.raises(RewardError, match="orm model but none is loaded"):
            unloaded.score(_episodes([RMSample(Problem("u", "q", "1", "arithmetic"), ("1",), 1.0)]), timeout_s=60)
    finally:
        unloaded.shutdown()


def test_trainer_state_continues_training_exactly(cluster, cfg, labelled, tiny_model, tmp_path):
    """A trainer rebuilt from the served weights plus ``save_state``'s folder trains its next round like
    the trainer that never stopped; one with a fresh optimizer (what a resume used to get) does not."""
    from learner.actor import RewardModelLearner

    samples = labelled[:24]  # 3 optimizer steps per round (micro-batches of 8, one epoch)

    def start(path):
        return ray.remote(RewardModelLearner).options(num_cpus=1).remote(cfg, "orm", path)

    first = start(tiny_model)
    ray.get(first.train.remote(samples, []))
    served = ray.get(first.save.remote(str(tmp_path / "served")))
    ray.get(first.save_state.remote(str(tmp_path / "state")))
    uninterrupted = ray.get(first.train.remote(samples, []))
    ray.kill(first)

    resumed = start(served)
    assert ray.get(resumed.load_state.remote(str(tmp_path / "state"))) == 1  # one round trained before
    again = ray.get(resumed.train.remote(samples, []))
    ray.kill(resumed)
    fresh = start(served)
    restarted = ray.get(fresh.train.remote(samples, []))
    ray.kill(fresh)

    assert uninterrupted["rm/optimizer_steps"] == again["rm/optimizer_steps"] == 6
    assert restarted["rm/optimizer_steps"] == 3
    for key in ("rm/loss_first_epoch", "rm/loss_last_epoch"):
        assert again[key] == pytest.approx(uninterrupted[key], rel=1e-6, abs=1e-7)
    # a fresh AdamW (and round 0's shuffle) takes other steps: the round's loss differs
    assert abs(restarted["rm/loss_first_epoch"] - uninterrupted["rm/loss_first_epoch"]) > 1e-5
    with pytest.raises(ray.exceptions.RayTaskError, match="no reward-model trainer state"):
        empty = start(served)
        try:
            ray.get(empty.load_state.remote(str(tmp_path / "nothing-here")))
        finally:
            ray.kill(empty)
