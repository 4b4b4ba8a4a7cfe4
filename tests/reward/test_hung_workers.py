"""A hung reward worker is replaced, not waited on (stand-in workers on a real Ray; the real worker:
test_pool.py): a worker that answers nothing (SIGSTOP) is declared hung after the stall deadline,
killed, restarted and its shard rescored, while a worker that is only busy keeps its place."""
import os
import signal
import time

import pytest
import ray

import reward.pool as pool_module
from orchestrator.types import Episode, Problem
from reward.pool import RewardError, RewardPool
from tests.fakes.actors import FakeRewardWorker, sigstop_actor

STALL_S = 2.0
TIMEOUT_S = 30.0
SLACK_S = 8.0
"""Beyond the stall deadline: noticing the silence, killing the worker, starting a new one, rescoring."""


@pytest.fixture
def pool(ray_local, monkeypatch):
    monkeypatch.setattr(pool_module, "RewardWorker", FakeRewardWorker)
    p = RewardPool(num_workers=2, num_cpus_per_worker=0.5, correct_reward=1.0, incorrect_reward=0.0,
                   max_restarts=1, stall_timeout_s=STALL_S, name_prefix="hang-test-worker")
    p.ready(timeout_s=60)
    stopped: list[int] = []
    yield p, stopped
    for pid in stopped:  # let go of any the pool did not kill
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    p.shutdown()


def _episodes(n):
    return [Episode(group_id=i, problem=Problem(uid=f"q{i}", question="?", gold=str(i), task="arithmetic"),
                    prompt_token_ids=(1,), response_token_ids=(2,), sampler_logprobs=(-0.1,),
                    response_text=str(i if i % 2 else -1), finish_reason="stop", policy_version=0) for i in range(n)]


def _sigstop(p, stopped, i):
    return sigstop_actor(p.workers[i].ping.remote(), stopped)


def test_sigstopped_worker_is_killed_restarted_and_its_shard_rescored_while_a_busy_one_is_kept(pool):
    p, stopped = pool
    ray.get(p.workers[0].busy.remote(2 * STALL_S))  # scores slowly, answers heartbeats meanwhile
    _sigstop(p, stopped, 1)
    start = time.monotonic()
    scored, stats = p.score(_episodes(6), timeout_s=TIMEOUT_S)
    elapsed = time.monotonic() - start
    assert [e.group_id for e in scored] == list(range(6))
    assert [e.correct for e in scored] == [i % 2 == 1 for i in range(6)]  # every shard scored, in order
    assert stats["reward/workers_hung"] == 1 and stats["reward/worker_restarts"] == 1
    assert p.names == ["hang-test-worker-0", "hang-test-worker-1-restart1"]  # the busy worker was not replaced
    assert elapsed < 2 * STALL_S + SLACK_S, elapsed
    # the next step runs on the replacement; another hang is past reward.max_restarts=1
    assert [e.correct for e in p.score(_episodes(2), timeout_s=TIMEOUT_S)[0]] == [False, True]
    _sigstop(p, stopped, 1)
    with pytest.raises(RewardError, match=r"hang-test-worker-1-restart1 hung \(no progress for .*reward.max_restarts"):
        p.score(_episodes(2), timeout_s=TIMEOUT_S)
