"""The reward actors around the protected scorer (real Ray; the scorer alone: test_rule_scorer.py)."""
import time
from dataclasses import replace

import pytest
import ray

from orchestrator.types import Episode, Problem
from reward.pool import RewardError, RewardPool
from tests.reward.faulty_verifiers import FAULTY_VERIFIERS

CORRECT, INCORRECT = 2.0, -0.5
SAMPLE_TIMEOUT_S = 2.0
SLACK_S = 4.0
"""Time allowed beyond the deadline: killing the stuck process and starting a new one."""

# Starting Ray and the reward actors takes 20-35 s on a 2-core machine, so every test that needs the
# cluster is marked slow.
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
    assert [e.verifier_error for e in scored] == [None] * 5
    assert pool.score([], timeout_s=10) == ([], {"reward/timeouts": 0, "reward/verifier_errors": 0,
                                                 "reward/worker_restarts": 0, "reward/workers_hung": 0,
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
def test_pool_scores_a_failing_verifier_wrong_and_records_why(pool):
    episodes = [_episode("arithmetic", "1", "1", 0), _episode("boom", "x", "1", 0),
                _episode("die", "x", "1", 1), _episode("arithmetic", "2", "2", 1)]
    scored, stats = pool.score(episodes, timeout_s=60)
    assert [(e.reward, e.correct) for e in scored] == [(2.0, True), (-0.5, False), (-0.5, False), (2.0, True)]
    assert [e.verifier_error for e in scored] == [None, "ZeroDivisionError: cannot grade 'x'",
                                                  "verifier process died (exit code 3)", None]
    assert stats["reward/verifier_errors"] == 2 and stats["reward/timeouts"] == 0
    assert stats["reward/worker_restarts"] == 0  # the verifier process was replaced, not the actor
    unknown = r"test-reward-worker-1.*sample 'q \(episode 1, group 0\)': unknown task 'chess'"
    with pytest.raises(RewardError, match=unknown):
        pool.score([_episode("arithmetic", "1", "1", 0), _episode("chess", "e4", "e4", 0)], timeout_s=60)


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


@slow
def test_sigstopped_worker_is_killed_and_its_shard_rescored_by_a_restarted_one(ray_cluster):
    """The real worker answers heartbeats on a thread of its own: stopped, it is found out after the
    stall deadline (not the call's), killed, replaced and its shard rescored."""
    import os
    import signal

    stall_s = 3.0
    hung = RewardPool(num_workers=1, correct_reward=CORRECT, incorrect_reward=INCORRECT, timeout_s=SAMPLE_TIMEOUT_S,
                      verifiers=FAULTY_VERIFIERS, name_prefix="hung-reward-worker", stall_timeout_s=stall_s,
                      max_restarts=1)
    pid = None
    try:
        hung.ready(timeout_s=120)
        pid = ray.get(hung.workers[0].ping.remote(), timeout=60)
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        scored, stats = hung.score([_episode("arithmetic", "3", "3"), _episode("arithmetic", "4", "3")], timeout_s=600)
        # the rest is a replacement's start (its verifier process and parsers): well under the call's 600 s
        assert time.monotonic() - start < stall_s + 120
        assert [(e.reward, e.correct) for e in scored] == [(CORRECT, True), (INCORRECT, False)]
        assert (stats["reward/workers_hung"], stats["reward/worker_restarts"]) == (1, 1)
        assert hung.names == ["hung-reward-worker-0-restart1"]
        assert [e.correct for e in hung.score([_episode("arithmetic", "5", "5")], timeout_s=60)[0]] == [True]
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        hung.shutdown()


def test_stats_count_the_episodes_whose_verifier_failed():
    pool = type("Pool", (), {"restarts": 1, "workers_hung": 0})()
    episodes = [_episode("arithmetic", "1", "1").with_reward(2.0, True),
                replace(_episode("boom", "x", "1"), verifier_error="ZeroDivisionError: cannot grade 'x'"),
                replace(_episode("die", "x", "1"), verifier_error="verifier process died (exit code 3)")]
    stats = RewardPool.stats(pool, episodes, None, 1, 0.5)
    assert (stats["reward/verifier_errors"], stats["reward/timeouts"], stats["reward/worker_restarts"]) == (2, 1, 1)
    assert RewardPool.stats(pool, [], None, 0, 0.0)["reward/verifier_errors"] == 0
