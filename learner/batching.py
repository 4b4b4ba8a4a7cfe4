"""Turn a step's episodes into padded tensors for the learner (pure torch, no model).

Each row is prompt + response, right-padded. Targets are the next tokens, so position t of the
[B, L-1] target tensors scores token t+1; ``response_mask`` marks the positions whose target is a
response token (response token k of row i sits at target position ``prompt_len_i - 1 + k``).
Prompt tokens are never trained on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from orchestrator.types import Episode


def _pick(values: list, rows: list[int]) -> list:
    return [values[i] for i in rows] if values else []


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long
    targets: torch.Tensor  # [B, L-1] long: input_ids shifted left
    response_mask: torch.Tensor  # [B, L-1] float: 1 where the target is a response token
    sampler_logprobs: torch.Tensor  # [B, L-1] float, 0 outside the response
    rewards: torch.Tensor  # [B] float
    prompt_lengths: list[int] = field(default_factory=list)
    response_lengths: list[int] = field(default_factory=list)
    step_rewards: list[torch.Tensor] = field(default_factory=list)  # per row [n_steps] (process supervision)
    step_ends: list[torch.Tensor] = field(default_factory=list)  # per row [n_steps] long
    advantages: torch.Tensor | None = None  # [B] or [B, L-1], filled by the learner

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: Sequence[int]) -> "TokenBatch":
        """The given rows (in that order), trimmed to the longest of them so micro-batches carry no
        extra padding."""
        rows = list(rows)
        idx = torch.tensor(rows, dtype=torch.long)
        width = int(self.attention_mask[idx].sum(dim=1).max().item())
        adv = self.advantages
        if adv is not None:
            adv = adv[idx] if adv.dim() == 1 else adv[idx, : width - 1]
        return TokenBatch(
            input_ids=self.input_ids[idx, :width],
            attention_mask=self.attention_mask[idx, :width],
            targets=self.targets[idx, : width - 1],
            response_mask=self.response_mask[idx, : width - 1],
            sampler_logprobs=self.sampler_logprobs[idx, : width - 1],
            rewards=self.rewards[idx],
            prompt_lengths=_pick(self.prompt_lengths, rows),
            response_lengths=_pick(self.response_lengths, rows),
            step_rewards=_pick(self.step_rewards, rows),
            step_ends=_pick(self.step_ends, rows),
            advantages=adv,
        )

    def row_parts(self) -> tuple[list[int], list[int]]:
        """(prompt lengths, response lengths) of the rows, from the attention mask."""
        totals = self.attention_mask.sum(dim=1).tolist()
        return list(self.prompt_lengths), [int(t) - p for t, p in zip(totals, self.prompt_lengths)]

    def prompt_keys(self) -> list[tuple[int, ...]]:
        """Each row's prompt token ids (rows with equal keys share a prompt)."""
        return [tuple(self.input_ids[i, :p].tolist()) for i, p in enumerate(self.prompt_lengths)]

    def response_window(self) -> int:
        """First target position that scores a response token in any row (``min prompt length - 1``):
        logits before it are never used, so the learner does not compute them."""
        return max(0, min(self.prompt_lengths) - 1) if self.prompt_lengths else 0

    def scatter_response(self, per_row: Sequence[torch.Tensor]) -> torch.Tensor:
        """Place one [response_len_i] tensor per row at its target positions of a [B, L-1] zero tensor."""
        out = torch.zeros_like(self.response_mask)
        for i, values in enumerate(per_row):
            start = self.prompt_lengths[i] - 1
            out[i, start : start + len(values)] = values.to(out.dtype)
        return out


def micro_batch_rows(batch: TokenBatch, size: int) -> list[list[int]]:
    """Split the rows into micro-batches of ``size`` (the last may be smaller), rows of similar length
    together: each micro-batch is padded only to its own longest row, so sorting by length removes
    most of the padding a fixed order would compute. The GRPO loss is a sum over rows with global
    normalisers, so the split does not change the accumulated gradient.
    """
    lengths = batch.attention_mask.sum(dim=1).tolist()
    order = sorted(range(len(batch)), key=lambda i: (lengths[i], batch.prompt_lengths[i] if batch.prompt_lengths else 0, i))
    return [order[i : i + size] for i in range(0, len(order), size)]


def collate(episodes: Sequence[Episode], pad_token_id: int = 0) -> TokenBatch:
    """Pad episodes into a TokenBatch (rewards, sampler logprobs and step annotations included)."""
    rows = [list(e.prompt_token_ids) + list(e.response_token_ids) for e in episodes]
    width = max(len(r) for r in rows)
    if width < 2:
        raise ValueError("every sequence needs at least two tokens (a prompt token and a response token)")
    n = len(rows)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    response_mask = torch.zeros((n, width - 1), dtype=torch.float32)
    old = torch.zeros((n, width - 1), dtype=torch.float32)
    for i, e in enumerate(episodes):
        p, r = len(e.prompt_token_ids), len(e.response_token_ids)
        if len(e.sampler_logprobs) != r:
            raise ValueError(f"row {i} ({e.problem.uid}): {len(e.sampler_logprobs)} sampler logprobs for {r} response tokens")
        if p < 1:
            raise ValueError(f"row {i} ({e.problem.uid}): empty prompt")
        input_ids[i, : p + r] = torch.tensor(rows[i], dtype=torch.long)
        attention[i, : p + r] = 1
        response_mask[i, p - 1 : p + r - 1] = 1.0
        if r:
            old[i, p - 1 : p + r - 1] = torch.tensor(e.sampler_logprobs, dtype=torch.float32)
    return TokenBatch(
        input_ids=input_ids,
        attention_mask=attention,
        targets=input_ids[:, 1:].clone(),
        response_mask=response_mask,
        sampler_logprobs=old,
        rewards=torch.tensor([e.reward for e in episodes], dtype=torch.float32),
        prompt_lengths=[len(e.prompt_token_ids) for e in episodes],
        response_lengths=[len(e.response_token_ids) for e in episodes],
        step_rewards=[torch.tensor(e.step_rewards, dtype=torch.float32) for e in episodes],
        step_ends=[torch.tensor(e.step_ends, dtype=torch.long) for e in episodes],
    )
