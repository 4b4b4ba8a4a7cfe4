"""Reward scoring overlapped with generation: a step's samples are scored as the engines finish them.

The driver hands every chunk of finished samples (``RolloutGroup.generate(on_chunk=...)``) to a
``ChunkScorer``, which scores it on the reward workers in a background thread while the engines keep
decoding the rest; ``result`` then waits only for the chunks still being scored and joins them in
group order, with the same metrics a whole-step ``RewardPool.score`` gives.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional, Sequence

from orchestrator.types import Episode


class ChunkScorer:
    """Scores one step's chunks of episodes, one chunk at a time, in a single background thread.

    One thread, so the pool's own bookkeeping (worker restarts, rescoring) never sees two callers; the
    driver must not use the pool itself until ``result`` or ``close`` has returned.
    ``segment(episodes) -> steps`` splits responses into reasoning steps (process supervision).
    """

    def __init__(self, pool, timeout_s: float, segment: Optional[Callable[[Sequence[Episode]], list]] = None):
        self.pool, self.timeout_s, self.segment = pool, timeout_s, segment
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-overlap")
        self._chunks: list[Future] = []

    def submit(self, episodes: Sequence[Episode]) -> None:
        """Queue a chunk of finished samples for scoring; returns at once."""
        self._chunks.append(self._executor.submit(self._score, list(episodes)))

    def _score(self, episodes: list[Episode]) -> tuple:
        t0 = time.monotonic()
        steps = self.segment(episodes) if self.segment is not None else None
        rewarded, prm_scores, timeouts = self.pool.score_parts(episodes, self.timeout_s, steps)
        return rewarded, steps, prm_scores, timeouts, time.monotonic() - t0

    def result(self) -> tuple[list[Episode], Optional[list], dict]:
        """(rewarded episodes in group order, their steps or None, reward metrics). ``time/reward_s`` is the
        scoring time of all chunks (mostly hidden behind generation); ``time/reward_wait_s`` is what the
        caller waited here after generation ended. A chunk's error (RewardError naming the worker) is
        raised here."""
        t0 = time.monotonic()
        try:
            parts = [chunk.result() for chunk in self._chunks]
        finally:
            self.close()
        rows = []
        for rewarded, steps, prm_scores, _, _ in parts:
            none = [None] * len(rewarded)
            rows.extend(zip(rewarded, steps if steps is not None else none, prm_scores if prm_scores is not None else none))
        rows.sort(key=lambda row: row[0].group_id)  # stable: a group's samples keep their arrival order
        episodes = [episode for episode, _, _ in rows]
        steps = [s for _, s, _ in rows] if self.segment is not None else None
        prm = [p for _, _, p in rows] if any(part[2] is not None for part in parts) else None
        stats = self.pool.stats(episodes, prm, sum(part[3] for part in parts), sum(part[4] for part in parts))
        stats["time/reward_wait_s"] = time.monotonic() - t0
        return episodes, steps, stats

    def close(self) -> None:
        """Drop chunks not started yet and wait for the one being scored (after a generation error)."""
        for chunk in self._chunks:
            chunk.cancel()
        self._executor.shutdown(wait=True)
