"""ChunkScorer: chunks are scored in the background while the caller goes on, then joined in group order
with the metrics of a whole-step score (a stand-in pool; the real pool is used by the driver tests)."""
import threading

import pytest

from orchestrator.types import Episode, Problem
from reward.overlap import ChunkScorer
from reward.pool import RewardError, RewardPool


def _episode(group_id, text):
    return Episode(group_id=group_id, problem=Problem(uid=f"q{group_id}", question="?", gold="1", task="arithmetic"),
                   prompt_token_ids=(1,), response_token_ids=(2, 3), sampler_logprobs=(-0.1, -0.2),
                   response_text=text, finish_reason="stop", policy_version=0)


class StandInPool:
    """``score_parts``: reward 1 when the text is '1'; one timeout per chunk; blocks until ``gate`` opens."""

    stats = RewardPool.stats
    restarts = 0
    workers_hung = 0

    def __init__(self, fail_on=None):
        self.gate, self.calls, self.fail_on = threading.Event(), [], fail_on

    def score_parts(self, episodes, timeout_s, steps=None, rule_only=False):
        assert self.gate.wait(10)
        self.calls.append(([e.group_id for e in episodes], steps))
        if self.fail_on is not None and self.fail_on in {e.group_id for e in episodes}:
            raise RewardError(f"reward-worker-0 failed on group {self.fail_on}")
        rewarded = [e.with_reward(float(e.response_text == "1"), e.response_text == "1") for e in episodes]
        return rewarded, None, 1


def test_chunks_are_scored_in_the_background_and_joined_in_group_order():
    pool = StandInPool()
    scorer = ChunkScorer(pool, timeout_s=5.0, segment=lambda eps: [([0], [e.response_text]) for e in eps])
    # chunks arrive in finishing order, not group order: group 2 first, then groups 0 and 1
    scorer.submit([_episode(2, "1"), _episode(2, "0")])
    scorer.submit([_episode(0, "0"), _episode(0, "0"), _episode(1, "1"), _episode(1, "1")])
    assert pool.calls == []  # submit returned while nothing could be scored yet
    pool.gate.set()
    episodes, steps, stats = scorer.result()
    assert [c[0] for c in pool.calls] == [[2, 2], [0, 0, 1, 1]]  # one chunk at a time, in submission order
    assert [(e.group_id, e.response_text) for e in episodes] == [(0, "0"), (0, "0"), (1, "1"), (1, "1"), (2, "1"), (2, "0")]
    assert [e.reward for e in episodes] == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    assert steps == [([0], [e.response_text]) for e in episodes]  # steps follow their episodes
    assert stats["reward/rule_mean"] == pytest.approx(3 / 6)  # over the whole step, not per chunk
    assert stats["reward/timeouts"] == 2  # one per chunk, summed
    assert stats["time/reward_s"] >= 0 and stats["time/reward_wait_s"] >= 0


def test_a_failed_chunk_is_raised_by_result_naming_the_worker():
    pool = StandInPool(fail_on=1)
    pool.gate.set()
    scorer = ChunkScorer(pool, timeout_s=5.0)
    scorer.submit([_episode(0, "1")])
    scorer.submit([_episode(1, "1")])
    with pytest.raises(RewardError, match="reward-worker-0 failed on group 1"):
        scorer.result()
    assert scorer._executor._shutdown  # noqa: SLF001 - the thread is gone after the error
