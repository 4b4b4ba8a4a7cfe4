"""The replay buffer of historical reward-model samples, and the 10% replay mix of Iterative RL.

DeepSeekMath (sec. 4.2) retrains the reward model "on the policy's new samples with a replay
mechanism that incorporates 10% of historical data". The buffer lives on disk (JSONL plus a small
state file, both replaced atomically), is bounded, and keeps a uniform sample of everything ever
added (reservoir sampling), so old iterations keep being represented however long the run.
"""
from __future__ import annotations

import json
import os
import random
from typing import Sequence

from orchestrator.types import RMSample


def replay_count(num_new: int, ratio: float) -> int:
    """Replayed samples to add to ``num_new`` fresh ones so they make ``ratio`` of the mix.

    ``n / (num_new + n) = ratio`` gives ``n = num_new * ratio / (1 - ratio)``, rounded to nearest.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"replay ratio must be in [0, 1), got {ratio}")
    return int(round(num_new * ratio / (1.0 - ratio)))


class ReplayBuffer:
    """A bounded on-disk reservoir of ``RMSample``s."""

    def __init__(self, directory: str, max_samples: int, seed: int = 0):
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.directory, self.max_samples = directory, max_samples
        os.makedirs(directory, exist_ok=True)
        self._data_path = os.path.join(directory, "samples.jsonl")
        self._state_path = os.path.join(directory, "state.json")
        self.samples: list[RMSample] = []
        self.seen = 0
        self._rng = random.Random(seed)
        if os.path.exists(self._state_path):
            self._load()

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self) -> None:
        with open(self._state_path) as f:
            state = json.load(f)
        self.seen = int(state["seen"])
        self._rng.setstate(_to_rng_state(state["rng"]))
        with open(self._data_path) as f:
            self.samples = [RMSample.from_json(json.loads(line)) for line in f if line.strip()]

    def add(self, samples: Sequence[RMSample]) -> None:
        """Add samples (reservoir: once full, the i-th sample ever seen stays with probability max/i)."""
        for sample in samples:
            self.seen += 1
            if len(self.samples) < self.max_samples:
                self.samples.append(sample)
            else:
                j = self._rng.randrange(self.seen)
                if j < self.max_samples:
                    self.samples[j] = sample
        self._save()

    def sample(self, n: int) -> list[RMSample]:
        """``n`` distinct samples drawn uniformly (all of them when the buffer holds fewer)."""
        if n >= len(self.samples):
            return list(self.samples)
        return self._rng.sample(self.samples, n)

    def _save(self) -> None:
        _write_atomic(self._data_path, "".join(json.dumps(s.to_json()) + "\n" for s in self.samples))
        _write_atomic(self._state_path, json.dumps({"seen": self.seen, "size": len(self.samples),
                                                    "rng": _from_rng_state(self._rng.getstate())}))


def mix_with_replay(new: Sequence[RMSample], buffer: ReplayBuffer, ratio: float) -> tuple[list[RMSample], int]:
    """(fresh samples + replayed ones, number replayed). Draws before adding ``new`` to the buffer."""
    replayed = buffer.sample(replay_count(len(new), ratio))
    return list(new) + replayed, len(replayed)


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _from_rng_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _to_rng_state(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
