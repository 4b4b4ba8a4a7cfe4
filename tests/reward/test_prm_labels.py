"""Math-Shepherd step labels: which prefixes are expanded, and the labels from completion counts."""
import pytest

from orchestrator.types import Episode, Problem
from reward.prm_labels import expansion_plan, prefix_token_ids, step_labels


def _ep(correct, n_tokens=6):
    return Episode(0, Problem("u", "q", "1", "gsm8k"), (100, 101), tuple(range(n_tokens)), (0.0,) * n_tokens,
                   "x", "stop", 0, correct=correct)


EPISODES = [_ep(True), _ep(False), _ep(False)]
STEPS = [([1, 3, 5], ["a", "b", "c"]), ([2, 5], ["d", "e"]), ([5], ["f"])]


def test_hard_plan_expands_only_non_final_steps_of_wrong_responses():
    assert expansion_plan(EPISODES, STEPS, "hard", 100) == [(1, 0)]
    assert expansion_plan(EPISODES, STEPS, "soft", 100) == [(1, 0), (0, 0), (0, 1)]  # wrong ones first
    assert expansion_plan(EPISODES, STEPS, "soft", 2) == [(1, 0), (0, 0)]
    with pytest.raises(ValueError):
        expansion_plan(EPISODES, STEPS, "medium", 1)


def test_prefix_ends_with_the_step():
    assert prefix_token_ids(EPISODES[0], STEPS[0][0], 1) == [100, 101, 0, 1, 2, 3]


def test_hard_labels():
    # episode 1, step 0: 1 of 4 completions right -> 1; its last step is wrong -> 0
    labels = step_labels(EPISODES, STEPS, [(1, 0)], [1], rollouts=4, mode="hard")
    assert labels == [(1.0, 1.0, 1.0), (1.0, 0.0), (0.0,)]
    labels = step_labels(EPISODES, STEPS, [(1, 0)], [0], rollouts=4, mode="hard")
    assert labels[1] == (0.0, 0.0)


def test_soft_labels_count_the_response_itself():
    plan = [(1, 0), (0, 0), (0, 1)]
    labels = step_labels(EPISODES, STEPS, plan, [2, 4, 1], rollouts=4, mode="soft")
    # wrong episode: 2 of 4 completions + itself (wrong) = 2/5; correct episode: (4+1)/5, (1+1)/5
    assert labels[1] == (pytest.approx(0.4), 0.0)
    assert labels[0] == (pytest.approx(1.0), pytest.approx(0.4), 1.0)
    with pytest.raises(ValueError):
        step_labels(EPISODES, STEPS, plan, [1], rollouts=4, mode="soft")
