"""Turn a step's episodes into padded tensors for the learner (pure torch, no model).

Each row is prompt + response, right-padded. Targets are the next tokens, so position t of the
[B, L-1] target tensors scores token t+1; ``response_mask`` marks the positions whose target is a
response token. Prompt tokens are never trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long
    targets: torch.Tensor  # [B, L-1] long: input_ids shifted left
    response_mask: torch.Tensor  # [B, L-1] float: 1 where the target is a response token
    advantages: torch.Tensor  # [B] or [B, L-1] float
    sampler_logprobs: torch.Tensor  # [B, L-1] float, 0 outside the response

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def slice(self, start: int, end: int) -> "TokenBatch":
        """Rows [start, end), trimmed to the longest row so micro-batches carry no extra padding."""
        width = int(self.attention_mask[start:end].sum(dim=1).max().item())
        return TokenBatch(
            input_ids=self.input_ids[start:end, :width],
            attention_mask=self.attention_mask[start:end, :width],
            targets=self.targets[start:end, : width - 1],
            response_mask=self.response_mask[start:end, : width - 1],
            advantages=self.advantages[start:end] if self.advantages.dim() == 1 else self.advantages[start:end, : width - 1],
            sampler_logprobs=self.sampler_logprobs[start:end, : width - 1],
        )


def collate(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    sampler_logprobs: Sequence[Sequence[float]],
    advantages: Sequence[float],
    pad_token_id: int = 0,
) -> TokenBatch:
    """Pad (prompt, response) pairs into a TokenBatch; one scalar advantage per sequence."""
    if not (len(prompts) == len(responses) == len(sampler_logprobs) == len(advantages)):
        raise ValueError("prompts, responses, sampler_logprobs and advantages must have the same length")
    rows = [list(p) + list(r) for p, r in zip(prompts, responses)]
    width = max(len(r) for r in rows)
    if width < 2:
        raise ValueError("every sequence needs at least two tokens (a prompt token and a response token)")
    n = len(rows)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    response_mask = torch.zeros((n, width - 1), dtype=torch.float32)
    old = torch.zeros((n, width - 1), dtype=torch.float32)
    for i, (p, r, lp) in enumerate(zip(prompts, responses, sampler_logprobs)):
        if len(lp) != len(r):
            raise ValueError(f"row {i}: {len(lp)} sampler logprobs for {len(r)} response tokens")
        length = len(p) + len(r)
        input_ids[i, :length] = torch.tensor(rows[i], dtype=torch.long)
        attention[i, :length] = 1
        # target index t scores token t+1: the response occupies targets [len(p)-1, length-1)
        response_mask[i, len(p) - 1 : length - 1] = 1.0
        if r:
            old[i, len(p) - 1 : length - 1] = torch.tensor(lp, dtype=torch.float32)
    return TokenBatch(
        input_ids=input_ids,
        attention_mask=attention,
        targets=input_ids[:, 1:].clone(),
        response_mask=response_mask,
        advantages=torch.tensor(list(advantages), dtype=torch.float32),
        sampler_logprobs=old,
    )
