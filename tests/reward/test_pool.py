"""Reward scoring: the process-isolated scorer, then the Ray actors around it (real Ray)."""
import time

import pytest
import ray

from orchestrator.types import Episode, Problem
from reward.pool import RewardError, RewardPool, RuleRewardScorer
from tests.reward.faulty_verifiers import FAULTY_VERIFIERS

CORRECT, INCORRECT = 2.0, -0.5
SAMPLE_TIMEOUT_S = 2.0
SLACK_S = 4.0
"""Time allowed beyond the deadline: killing the stuck process and starting a new one."""

# Starting Ray and the reward actors takes 20-35 s on a 2-core machine, so every test that
# needs the cluster is marked slow; the scorer tests above them need no Ray.
slow = pytest.mark.slow


def _episode(task: str, text: str, gold: str, group_id: int = 0, uid: str = "q") -> Episode:
    problem = Problem(uid=uid, question="?", gold=gold, task=task)
    return Episode(
        group_id=group_id,
        problem=problem,
        prompt_token_ids=(1, 2),
        response_token_ids=(3,),
        sampler_logprobs=(-0.1,),
        response_text=text,
        finish_reason="stop",
        policy_version=0,
    )


@pytest.fixture(scope="module")
def scorer():
    s = RuleRewardScorer(CORRECT, INCORRECT, SAMPLE_TIMEOUT_S, verifiers=FAULTY_VERIFIERS)
    s.start()
    yield s
    s.close()


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(ray_cluster):
    p = RewardPool(
        num_workers=2,
        num_cpus_per_worker=0.5,
        correct_reward=CORRECT,
        incorrect_reward=INCORRECT,
        timeout_s=SAMPLE_TIMEOUT_S,
        verifiers=FAULTY_VERIFIERS,
        name_prefix="test-reward-worker",
    )
    p.ready(timeout_s=120)
    yield p
    p.shutdown()


def test_scorer_gives_hand_computed_rewards(scorer):
    items = [
        ("arithmetic", "5 + 7 = 12", "12", "a"),
        ("arithmetic", "13", "12", "b"),
        ("gsm8k", "so she sold 72 clips\n#### 72", "72", "c"),
        ("math", "\\boxed{\\frac{1}{2}}", "0.5", "d"),
        ("math", "no box", "0.5", "e"),
    ]
    results, stats = scorer.score(items)
    assert results == [(2.0, True), (-0.5, False), (2.0, True), (2.0, True), (-0.5, False)]
    assert stats["timeouts"] == 0
    assert scorer.score([]) == ([], {"timeouts": 0, "seconds": pytest.approx(0.0, abs=0.5)})


def test_scorer_times_out_a_hanging_sample_and_scores_the_rest(scorer):
    items = [
        ("arithmetic", "12", "12", "before"),
        ("hang", "anything", "1", "stuck"),
        ("arithmetic", "13", "13", "after-1"),
        ("arithmetic", "1", "13", "after-2"),
    ]
    start = time.monotonic()
    results, stats = scorer.score(items)
    elapsed = time.monotonic() - start
    assert results == [(2.0, True), (-0.5, False), (2.0, True), (-0.5, False)]
    assert stats["timeouts"] == 1
    assert SAMPLE_TIMEOUT_S <= elapsed < SAMPLE_TIMEOUT_S + SLACK_S
    # The pool was recreated: the next call works and counts no timeout.
    results, stats = scorer.score([("arithmetic", "7", "7", "next")])
    assert (results, stats["timeouts"]) == ([(2.0, True)], 0)


def test_scorer_raises_reward_error_naming_the_sample(scorer):
    with pytest.raises(RewardError, match=r"task 'boom'.*sample 'bad-uid'.*ZeroDivisionError"):
        scorer.score([("arithmetic", "1", "1", "ok"), ("boom", "x", "1", "bad-uid")])
    with pytest.raises(RewardError, match=r"sample 'u9': unknown task 'chess'"):
        scorer.score([("chess", "e4", "e4", "u9")])


def test_scorer_after_an_error_does_not_wait_behind_stale_samples(scorer):
    # The hanging sample queued behind the failing one must not delay the next call.
    with pytest.raises(RewardError, match="boom"):
        scorer.score([("boom", "x", "1", "first"), ("hang", "x", "1", "queued")])
    results, stats = scorer.score([("arithmetic", "8", "8", "fresh")])
    assert results == [(2.0, True)]
    assert stats["timeouts"] == 0
    assert stats["seconds"] < SAMPLE_TIMEOUT_S


def test_scorer_rejects_a_bad_timeout():
    with pytest.raises(ValueError, match="timeout_s"):
        RuleRewardScorer(1.0, 0.0, 0.0)


@slow
def test_pool_scores_episodes_in_order(pool):
    episodes = [
        _episode("arithmetic", "12", "12", 0, "p0"),
        _episode("arithmetic", "11", "12", 0, "p0"),
        _episode("gsm8k", "#### 1,200", "1200", 1, "p1"),
        _episode("gsm8k", "#### 1,300", "1200", 1, "p1"),
        _episode("math", "\\boxed{\\frac34}", "\\frac{3}{4}", 2, "p2"),
    ]
    scored, stats = pool.score(episodes, timeout_s=60)
    expected = [(2.0, True), (-0.5, False), (2.0, True), (-0.5, False), (2.0, True)]
    assert [(e.reward, e.correct) for e in scored] == expected
    assert [e.problem.uid for e in scored] == ["p0", "p0", "p1", "p1", "p2"]
    assert [e.response_text for e in scored] == [e.response_text for e in episodes]
    assert stats["reward/timeouts"] == 0
    assert stats["time/reward_s"] > 0
    assert pool.score([], timeout_s=10) == ([], {"reward/timeouts": 0, "reward/worker_restarts": 0,
                                                 "time/reward_s": pytest.approx(0, abs=1)})


@slow
def test_pool_counts_a_timeout_and_scores_the_other_samples(pool):
    episodes = [
        _episode("arithmetic", "3", "3", 0),
        _episode("hang", "x", "3", 0, uid="hangs"),
        _episode("arithmetic", "4", "3", 0),
        _episode("arithmetic", "9", "9", 1),
        _episode("arithmetic", "9", "8", 1),
    ]
    start = time.monotonic()
    scored, stats = pool.score(episodes, timeout_s=60)
    elapsed = time.monotonic() - start
    expected = [(2.0, True), (-0.5, False), (-0.5, False), (2.0, True), (-0.5, False)]
    assert [(e.reward, e.correct) for e in scored] == expected
    assert stats["reward/timeouts"] == 1
    assert elapsed < SAMPLE_TIMEOUT_S + SLACK_S


@slow
def test_pool_raises_reward_error_naming_the_episode(pool):
    episodes = [_episode("arithmetic", "1", "1", 0), _episode("boom", "x", "1", 0, uid="train.jsonl:17")]
    with pytest.raises(RewardError, match=r"test-reward-worker-1.*train\.jsonl:17.*ZeroDivisionError"):
        pool.score(episodes, timeout_s=60)


@slow
def test_pool_deadline_names_the_late_worker(ray_cluster):
    slow = RewardPool(num_workers=1, timeout_s=30.0, verifiers=FAULTY_VERIFIERS, name_prefix="late-reward-worker")
    try:
        slow.ready(timeout_s=120)
        start = time.monotonic()
        with pytest.raises(RewardError, match="late-reward-worker-0 did not answer within 1.0s"):
            slow.score([_episode("hang", "x", "1")], timeout_s=1.0)
        assert time.monotonic() - start < 10
    finally:
        slow.shutdown()
