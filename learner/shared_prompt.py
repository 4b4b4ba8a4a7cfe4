"""Shared-prompt layout of a micro-batch: each distinct prompt goes through the model once (pure torch).

A GRPO group is G responses to one prompt. A plain forward of prompt + response per row computes that
prompt G times; here the model runs once over the micro-batch's distinct prompts (left-padded, so every
prompt ends at the last column), their key/value cache is copied to the rows that share them, and the
responses run on top of it, each behind its prompt's last token (whose logits score the first response
token). Attention, positions and therefore logprobs and gradients are those of the
plain forward: a response token sees its own prompt and its own earlier tokens at the same positions.

The shared forward is two passes; ``learner.micro_batch_plan`` decides when it pays.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.batching import TokenBatch


@dataclass
class SharedPromptLayout:
    """Tensors of one micro-batch for the shared-prompt forward (``k`` distinct prompts, ``b`` rows).

    The prompt pass runs each prompt but its last token, through the decoder only (no logits); the
    response pass runs, per row, the prompt's last token and the response but its last token, so its
    logits at step t score response token t.
    """

    prompt_ids: torch.Tensor  # [k, P-1] long: each prompt without its last token, left-padded
    prompt_mask: torch.Tensor  # [k, P-1] long
    prompt_positions: torch.Tensor  # [k, P-1] long: 0.. from each prompt's first real token
    owner: torch.Tensor  # [b] long: the prompt of each row
    input_ids: torch.Tensor  # [b, R] long: the prompt's last token, then the response but its last token
    targets: torch.Tensor  # [b, R] long: the response tokens, right-padded
    response_mask: torch.Tensor  # [b, R] float: 1 on response tokens
    positions: torch.Tensor  # [b, R] long: each row's prompt length - 1 + t
    attention_mask: torch.Tensor  # [b, P-1 + R] long: the row's prompt (cache) columns, then its inputs
    target_index: torch.Tensor  # [b, R] long: where each response token sits in the [b, w-1] target layout
    target_width: int  # w-1

    @classmethod
    def build(cls, mb: TokenBatch, pad_id: int = 0) -> "SharedPromptLayout":
        prompts, responses = mb.row_parts()
        keys = mb.prompt_keys()
        distinct = list(dict.fromkeys(keys))
        index = {key: j for j, key in enumerate(distinct)}
        width_p, width_r = max(prompts) - 1, max(responses)
        if width_r < 1:
            raise ValueError("shared-prompt forward needs at least one response token in the micro-batch")
        k, b = len(distinct), len(mb)
        prompt_ids = torch.full((k, width_p), pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((k, width_p), dtype=torch.long)
        for j, key in enumerate(distinct):
            head = key[:-1]
            if head:
                prompt_ids[j, width_p - len(head):] = torch.tensor(head, dtype=torch.long)
                prompt_mask[j, width_p - len(head):] = 1
        owner = torch.tensor([index[key] for key in keys], dtype=torch.long)
        input_ids = torch.full((b, width_r), pad_id, dtype=torch.long)
        targets = torch.full((b, width_r), pad_id, dtype=torch.long)
        response_mask = torch.zeros((b, width_r), dtype=torch.float32)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            input_ids[i, :r] = mb.input_ids[i, p - 1 : p + r - 1]
            targets[i, :r] = mb.input_ids[i, p : p + r]
            response_mask[i, :r] = 1.0
        start = torch.tensor(prompts, dtype=torch.long)[:, None] - 1 + torch.arange(width_r)
        target_width = mb.targets.shape[1]
        return cls(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            prompt_positions=(prompt_mask.cumsum(dim=1) - 1).clamp(min=0),
            owner=owner,
            input_ids=input_ids,
            targets=targets,
            response_mask=response_mask,
            positions=start,
            attention_mask=torch.cat([prompt_mask[owner], response_mask.long()], dim=1),
            target_index=start.clamp(max=target_width - 1),
            target_width=target_width,
        )

    def place(self, response_logprobs: torch.Tensor) -> torch.Tensor:
        """[b, R] per-response-token values -> the micro-batch's [b, w-1] target layout (0 elsewhere);
        differentiable."""
        values = response_logprobs * self.response_mask.to(response_logprobs.device)
        out = values.new_zeros(values.shape[0], self.target_width)
        return out.scatter_add(1, self.target_index.to(values.device), values)
