"""Shared-prompt layout of a micro-batch: each distinct prompt goes through the model once (pure torch).

A GRPO group is G responses to one prompt. A plain forward of prompt + response per row computes that
prompt G times; here the model runs once over the micro-batch's distinct prompts (left-padded, so every
prompt ends at the last column), their key/value cache is copied to the rows that share them, and the
responses run on top of it, each behind its prompt's last token (whose logits score the first response
token). Attention, positions and therefore logprobs and gradients are those of the
plain forward: a response token sees its own prompt and its own earlier tokens at the same positions.

The shared forward is two passes (prompts, then responses), and a pass has a fixed cost besides its
tokens (on CPU in bf16 most of a short pass: oneDNN prepares every weight matrix per call). A
micro-batch takes it only when it saves more tokens than that cost, ``overhead`` tokens
(``PASS_OVERHEAD_TOKENS``). ``plan_micro_batches`` picks which rows share a micro-batch: the
length-sorted split of ``learner.batching.micro_batch_rows`` or one that keeps each group's rows
together, whichever costs less; both are a fixed-size split of the rows, so the number of
micro-batches (DeepSpeed's gradient-accumulation count) never changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from learner.batching import TokenBatch, micro_batch_rows

PASS_OVERHEAD_TOKENS = {("cpu", torch.bfloat16): 160, ("cpu", torch.float32): 96}
"""Fixed cost of the extra pass, in tokens of the per-token cost. Measured with SmolLM2-135M on 2 Xeon
cores (AMX; bench/learner_step.py, docs/benchmarks.md): a 44-token pass costs what ~270 tokens of a long
pass cost in bf16 (fwd + bwd), ~135 in fp32; sharing every 44-token prompt (~190 tokens saved per
micro-batch of 8) made a bf16 step 3% faster in one run (8.48 -> 8.20 s) and 15% in another
(9.26 -> 8.06 s), sharing ~106-token GSM8K prompts 15% (18.5 -> 16.1 s). GPUs: ``GPU_PASS_OVERHEAD_TOKENS``."""
GPU_PASS_OVERHEAD_TOKENS = 128
"""Not measured (no GPU was available): a guess of kernel-launch cost against the per-token cost of a
model of a few billion parameters."""


def pass_overhead_tokens(on_gpu: bool, dtype: torch.dtype) -> int:
    """The per-pass cost ``prefers_shared`` charges, for the learner's device and dtype."""
    if on_gpu:
        return GPU_PASS_OVERHEAD_TOKENS
    return PASS_OVERHEAD_TOKENS.get(("cpu", dtype), PASS_OVERHEAD_TOKENS[("cpu", torch.float32)])


def _row_parts(mb: TokenBatch) -> tuple[list[int], list[int]]:
    """(prompt lengths, response lengths) of a micro-batch's rows."""
    totals = mb.attention_mask.sum(dim=1).tolist()
    return list(mb.prompt_lengths), [int(t) - p for t, p in zip(totals, mb.prompt_lengths)]


def _prompt_keys(mb: TokenBatch) -> list[tuple[int, ...]]:
    return [tuple(mb.input_ids[i, :p].tolist()) for i, p in enumerate(mb.prompt_lengths)]


def forward_tokens(mb: TokenBatch, shared: bool) -> int:
    """Token positions the model computes for a micro-batch, plain (every row padded to the longest
    prompt + response) or shared (each distinct prompt but its last token once, padded to the longest,
    plus, per row, that last token and the response, padded to the longest response)."""
    prompts, responses = _row_parts(mb)
    if not shared:
        return len(mb) * max(p + r for p, r in zip(prompts, responses))
    return len(set(_prompt_keys(mb))) * (max(prompts) - 1) + len(mb) * max(responses)


def prefers_shared(mb: TokenBatch, overhead: Optional[int]) -> bool:
    """Whether the shared-prompt forward saves more than ``overhead`` tokens for this micro-batch
    (never with ``overhead=None``; it needs prompt lengths and at least one response token)."""
    if overhead is None or not mb.prompt_lengths or max(_row_parts(mb)[1]) < 1:
        return False
    return forward_tokens(mb, shared=True) + overhead < forward_tokens(mb, shared=False)


def micro_batch_cost(mb: TokenBatch, overhead: Optional[int]) -> int:
    """Tokens of the forward ``prefers_shared`` picks, plus ``overhead`` for the shared one's extra pass."""
    if prefers_shared(mb, overhead):
        return forward_tokens(mb, shared=True) + overhead
    return forward_tokens(mb, shared=False)


def prompt_group_rows(batch: TokenBatch, size: int) -> list[list[int]]:
    """Split the rows into micro-batches of ``size`` with the rows of each prompt next to each other
    (prompts of similar length together, each prompt's rows by response length)."""
    keys = _prompt_keys(batch)
    first = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    lengths = batch.attention_mask.sum(dim=1).tolist()
    order = sorted(range(len(batch)), key=lambda i: (len(keys[i]), first[keys[i]], lengths[i], i))
    return [order[i : i + size] for i in range(0, len(order), size)]


def plan_micro_batches(batch: TokenBatch, size: int, overhead: Optional[int]) -> list[list[int]]:
    """Rows of each micro-batch: with ``overhead=None`` (no sharing) the length-sorted split; else that
    split or the prompt-grouped one, whichever costs less (``micro_batch_cost``)."""
    plain = micro_batch_rows(batch, size)
    if overhead is None or not batch.prompt_lengths:
        return plain

    def cost(plan: list[list[int]]) -> int:
        return sum(micro_batch_cost(batch.select(rows), overhead) for rows in plan)

    return min((plain, prompt_group_rows(batch, size)), key=cost)


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
        prompts, responses = _row_parts(mb)
        keys = _prompt_keys(mb)
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
