"""Which rows share a micro-batch, and which forward computes each (pure torch, no model).

Three forwards give a micro-batch's logprobs (``learner.logprobs``), all with the same values:

- ``plain``: prompt + response per row, padded to the longest row;
- ``shared`` (``learner.shared_prompt``): each distinct prompt once, its rows' responses on its
  key/value cache; two passes, and on CPU a pass has a large fixed cost besides its tokens
  (``PASS_OVERHEAD_TOKENS``: oneDNN prepares every weight matrix per call);
- ``packed`` (``learner.packed_sequences``): one row of the distinct prompts and the unpadded responses
  behind a 4-D mask (``learner.packing``); its attention is dense over the whole packed row.

Costs are in tokens of the linear layers' per-token work; attention adds ``pair_weight`` per attended
query-key pair (``attention_pair_weight`` of the model), so long rows do not pack. A micro-batch takes the
cheapest forward its ``ForwardOptions`` allow (ties: plain). ``plan_micro_batches`` splits the rows either by
length (``learner.batching.micro_batch_rows``) or keeping each prompt's rows together, whichever costs
less; both are fixed-size splits, so the number of micro-batches (DeepSpeed's gradient-accumulation
count) never changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from learner.batching import TokenBatch, micro_batch_rows
from learner.packing import packed_tokens

PASS_OVERHEAD_TOKENS = {("cpu", torch.bfloat16): 160, ("cpu", torch.float32): 96}
"""Fixed cost of the shared forward's extra pass, in tokens of the per-token cost. Measured with
SmolLM2-135M on 2 Xeon cores (AMX; bench/learner_step.py, docs/benchmarks.md): a 44-token pass costs what
~270 tokens of a long pass cost in bf16 (fwd + bwd), ~135 in fp32; sharing every 44-token prompt (~190
tokens saved per micro-batch of 8) made a bf16 step 3% faster in one run (8.48 -> 8.20 s) and 15% in
another (9.26 -> 8.06 s), sharing ~106-token GSM8K prompts 15% (18.5 -> 16.1 s). GPUs:
``GPU_PASS_OVERHEAD_TOKENS``."""
GPU_PASS_OVERHEAD_TOKENS = 128
"""Not measured (no GPU was available): a guess of kernel-launch cost against the per-token cost of a
model of a few billion parameters."""
MAX_PACKED_TOKENS = 4096
"""Longest packed row: its [n, n] mask (and eager attention's scores) grow with the square."""


@dataclass(frozen=True)
class ForwardOptions:
    """The forwards a micro-batch may take (default: plain only) and what they cost."""

    share_overhead: Optional[int] = None  # shared forward allowed, charged this many tokens for its extra pass
    pack: bool = False  # packed forward allowed
    pair_weight: float = 0.0  # cost of one attended query-key pair, in tokens
    max_packed_tokens: int = MAX_PACKED_TOKENS


def pass_overhead_tokens(on_gpu: bool, dtype: torch.dtype) -> int:
    """The per-pass cost the shared forward is charged, for the learner's device and dtype."""
    if on_gpu:
        return GPU_PASS_OVERHEAD_TOKENS
    return PASS_OVERHEAD_TOKENS.get(("cpu", dtype), PASS_OVERHEAD_TOKENS[("cpu", torch.float32)])


def attention_pair_weight(config, linear_params: int) -> float:
    """Attention's cost per attended (query, key) pair in tokens of the linear layers' cost: per pair and
    layer, q.k and the weighted sum of v are 2 x heads x head_dim multiply-adds; per token the linear layers
    are one per parameter (``linear_params``: all but the input embedding)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * heads * head_dim / max(linear_params, 1)


def shared_forward_tokens(mb: TokenBatch) -> int:
    """Token positions the shared forward computes for a micro-batch: each distinct prompt but its last
    token once, padded to the longest, plus, per row, that last token and the response, padded to the
    longest response. (The plain forward computes ``len(mb) x`` the micro-batch's width.)"""
    prompts, responses = mb.row_parts()
    return len(set(mb.prompt_keys())) * (max(prompts) - 1) + len(mb) * max(responses)


def forward_costs(mb: TokenBatch, options: ForwardOptions) -> dict[str, float]:
    """Cost of each forward ``options`` allow for this micro-batch (plain always)."""
    w = options.pair_weight
    prompts, responses = mb.row_parts()
    width = mb.input_ids.shape[1]  # TokenBatch.select trims micro-batches to their longest row
    costs = {"plain": len(mb) * width * (1 + w * width)}
    if options.share_overhead is not None and prompts and max(responses) >= 1:
        k, head, tail = len(set(mb.prompt_keys())), max(prompts) - 1, max(responses)
        costs["shared"] = (shared_forward_tokens(mb) + options.share_overhead
                           + w * (k * head * head + len(mb) * tail * (head + tail)))
    if options.pack and prompts and max(responses) >= 1:
        n = packed_tokens(mb)
        if n <= options.max_packed_tokens:
            costs["packed"] = n * (1 + w * n)
    return costs


def _cheapest(costs: dict[str, float]) -> str:
    return min(costs, key=lambda name: (costs[name], name != "plain"))


def choose_forward(mb: TokenBatch, options: ForwardOptions) -> str:
    """'plain', 'shared' or 'packed': the cheapest forward ``options`` allow (plain unless another is
    strictly cheaper)."""
    return _cheapest(forward_costs(mb, options))


def prompt_group_rows(batch: TokenBatch, size: int) -> list[list[int]]:
    """Split the rows into micro-batches of ``size`` with the rows of each prompt next to each other
    (prompts of similar length together, each prompt's rows by response length)."""
    keys = batch.prompt_keys()
    first: dict[tuple[int, ...], int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    lengths = batch.attention_mask.sum(dim=1).tolist()
    order = sorted(range(len(batch)), key=lambda i: (len(keys[i]), first[keys[i]], lengths[i], i))
    return [order[i : i + size] for i in range(0, len(order), size)]


def plan_micro_batches(batch: TokenBatch, size: int, options: ForwardOptions) -> list[tuple[list[int], str]]:
    """(rows, forward) of each micro-batch: the length-sorted split or, when a forward that shares
    prompts is allowed, the prompt-grouped one if it costs less; each with ``choose_forward``'s pick."""
    splits = [micro_batch_rows(batch, size)]
    if (options.share_overhead is not None or options.pack) and batch.prompt_lengths:
        splits.append(prompt_group_rows(batch, size))
    best, best_cost = [], float("inf")
    for split in splits:
        plan, total = [], 0.0
        for rows in split:
            costs = forward_costs(batch.select(rows), options)
            plan.append((rows, _cheapest(costs)))
            total += costs[plan[-1][1]]
        if total < best_cost:
            best, best_cost = plan, total
    return best
