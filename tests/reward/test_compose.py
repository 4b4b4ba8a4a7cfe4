"""Reward composition: rule, ORM and PRM weights, outcome and process supervision."""
import pytest

from orchestrator.types import Episode, Problem
from reward.compose import RewardWeights, compose, reward_stats


def _ep():
    return Episode(0, Problem("u", "q", "5", "arithmetic"), (1,), (2, 3, 4), (0.0,) * 3, "2 + 3 = 5\n\n5", "stop", 0)


def test_outcome_mix():
    ep = compose(_ep(), 1.0, True, 0.25, None, RewardWeights(rule=0.5, orm=2.0), None)
    assert ep.reward == pytest.approx(0.5 * 1.0 + 2.0 * 0.25)
    assert ep.rule_reward == 1.0 and ep.correct and ep.learned_reward == 0.25
    assert ep.step_rewards == ()
    rule_only = compose(_ep(), 0.0, False, None, None, RewardWeights(), None)
    assert rule_only.reward == 0.0 and rule_only.learned_reward is None


def test_process_mix_puts_outcome_model_on_the_last_step():
    steps = ([0, 2], [1.0, 1.0])  # rule steps (from the verifier process): equation right -> 1, last = outcome -> 1
    ep = compose(_ep(), 1.0, True, 0.8, [0.9, 0.6], RewardWeights(rule=1.0, orm=0.5, prm=2.0), steps)
    assert ep.step_rewards == pytest.approx((1.0 + 2 * 0.9, 1.0 + 2 * 0.6 + 0.5 * 0.8))
    assert ep.step_ends == (0, 2)
    wrong = compose(_ep(), 0.0, False, None, [0.2, 0.1], RewardWeights(rule=0.0, prm=1.0), ([0, 2], [1.0, 0.0]))
    assert wrong.step_rewards == pytest.approx((0.2, 0.1))
    halved = compose(_ep(), 0.0, False, None, None, RewardWeights(rule=0.5), ([0, 2], [1.0, 0.0]))
    assert halved.step_rewards == pytest.approx((0.5, 0.0))
    with pytest.raises(ValueError, match="scored 1 steps of 2"):
        compose(_ep(), 0.0, False, None, [0.2], RewardWeights(prm=1.0), steps)
    with pytest.raises(ValueError, match="1 rule step rewards for 2 steps"):
        compose(_ep(), 0.0, False, None, None, RewardWeights(), ([0, 2], [1.0]))


def test_weights_list_models_and_stats_show_agreement():
    assert RewardWeights(rule=1, orm=0, prm=0).models == []
    assert RewardWeights(orm=1, prm=1).models == ["orm", "prm"]
    eps = [compose(_ep(), 1.0, True, 0.9, None, RewardWeights(orm=1), None),
           compose(_ep(), 0.0, False, 0.7, None, RewardWeights(orm=1), None)]
    stats = reward_stats(eps)
    assert stats["reward/orm_mean"] == pytest.approx(0.8)
    assert stats["reward/orm_rule_agreement"] == pytest.approx(0.5)  # the second one fools the ORM
    assert stats["reward/rule_mean"] == pytest.approx(0.5)
