"""Reference logprobs computed ahead of the update, while the engines still generate (pure torch).

The reference model is frozen between resets, so a row's reference logprobs depend only on its tokens.
The learner can therefore score each chunk of finished samples as it arrives (it is idle during
generation) and keep the result here; ``train_step`` then takes the rows it finds and computes only
the rest. Rows are keyed by their tokens (prompt length + prompt and response ids), never by their
position: two identical samples of one group share one entry, which is correct because they have
the same logprobs.
"""
from __future__ import annotations

from typing import Callable

import torch

from learner.batching import TokenBatch


def row_key(batch: TokenBatch, i: int) -> tuple:
    """What a row's reference logprobs are a function of: its prompt length and its tokens."""
    length = int(batch.attention_mask[i].sum())
    return (batch.prompt_lengths[i], tuple(batch.input_ids[i, :length].tolist()))


class ReferenceCache:
    """Response-token reference logprobs per row, filled during generation and taken by the update.

    ``version`` is the reference model's version when the entries were computed; ``take`` with another
    version finds nothing (after a reset or a resume, every row is recomputed).
    """

    def __init__(self):
        self._rows: dict[tuple, torch.Tensor] = {}
        self.version = 0

    def __len__(self) -> int:
        return len(self._rows)

    def store(self, batch: TokenBatch, logprobs: torch.Tensor, version: int) -> None:
        """Keep row i's logprobs at its response positions (``logprobs``: [B, L-1], as the learner computes)."""
        if version != self.version:
            self.clear(version)
        for i in range(len(batch)):
            start = batch.prompt_lengths[i] - 1
            self._rows[row_key(batch, i)] = logprobs[i, start : start + batch.response_lengths[i]].clone()

    def take(self, batch: TokenBatch, version: int,
             compute: Callable[[TokenBatch], torch.Tensor]) -> tuple[torch.Tensor, int]:
        """[B, L-1] reference logprobs of ``batch`` (0 off-response): cached rows as stored, the others
        from ``compute(batch.select(rows))``. Returns them with the number of rows found. The cache is
        emptied: entries serve one step."""
        out = torch.zeros_like(batch.response_mask)
        missing = []
        rows = self._rows if version == self.version else {}
        for i in range(len(batch)):
            found = rows.get(row_key(batch, i))
            if found is None or len(found) != batch.response_lengths[i]:
                missing.append(i)
                continue
            start = batch.prompt_lengths[i] - 1
            out[i, start : start + len(found)] = found
        if missing:
            sub = batch.select(missing)
            out[missing, : sub.targets.shape[1]] = compute(sub).to(out.dtype) * sub.response_mask
        self.clear(version)
        return out, len(batch) - len(missing)

    def clear(self, version: int | None = None) -> None:
        self._rows = {}
        if version is not None:
            self.version = version
