"""Packed layout of a micro-batch: one row, no padding, each distinct prompt once (pure torch).

The rows of a micro-batch become one sequence: each distinct prompt, then, for every row with that
prompt, its response but the last token (which is only ever a target). A 4-D attention mask lets each
token see what it sees in the plain prompt + response forward and nothing else: a prompt token its own
prompt's earlier tokens, a response token its prompt and its own earlier response tokens. Positions
restart per prompt and continue from the prompt into each response, so rotary embeddings, attention and
therefore logprobs and gradients equal the plain forward's, in a single pass with neither padding nor
repeated prompts. The logits at a prompt's last token score the first response token of every row that
shares it; those at response token t score token t + 1.

Attention over the packed row is dense (every query against every key, masked), so it costs
``tokens**2`` pairs where the plain forward costs ``rows * width**2``: cheap for GRPO's short rows, not
for long ones; ``learner.micro_batch_plan`` weighs both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.batching import TokenBatch


def packed_tokens(mb: TokenBatch) -> int:
    """Length of the packed row: each distinct prompt, plus each row's response but its last token."""
    prompts, responses = mb.row_parts()
    return sum(len(key) for key in set(mb.prompt_keys())) + sum(max(r - 1, 0) for r in responses)


@dataclass
class PackedLayout:
    """Tensors of one micro-batch packed into a row of ``n`` tokens that score ``m`` response tokens."""

    input_ids: torch.Tensor  # [1, n] long
    positions: torch.Tensor  # [1, n] long: 0.. per prompt, continuing into each of its responses
    segment: torch.Tensor  # [n] long: the prompt or response each token belongs to
    home: torch.Tensor  # [n] long: the segment of that token's prompt
    score_at: torch.Tensor  # [m] long: the packed position whose logits score each response token
    targets: torch.Tensor  # [m] long: the response tokens, row by row
    rows: torch.Tensor  # [m] long: the micro-batch row of each response token
    columns: torch.Tensor  # [m] long: its position in the [b, w-1] target layout
    target_shape: tuple[int, int]  # (b, w-1)

    @classmethod
    def build(cls, mb: TokenBatch) -> "PackedLayout":
        prompts, responses = mb.row_parts()
        keys = mb.prompt_keys()
        ids: list[int] = []
        positions: list[int] = []
        segment: list[int] = []
        home: list[int] = []
        score_at: list[int] = []
        targets: list[int] = []
        rows: list[int] = []
        columns: list[int] = []
        segments = 0
        for key in dict.fromkeys(keys):
            prompt_segment, segments = segments, segments + 1
            ids += key
            positions += range(len(key))
            segment += [prompt_segment] * len(key)
            home += [prompt_segment] * len(key)
            prompt_last = len(ids) - 1
            for i in (i for i, k in enumerate(keys) if k == key and responses[i]):
                p, r = prompts[i], responses[i]
                response = mb.input_ids[i, p : p + r].tolist()
                start, segments = len(ids), segments + 1
                ids += response[:-1]
                positions += range(p, p + r - 1)
                segment += [segments - 1] * (r - 1)
                home += [prompt_segment] * (r - 1)
                score_at += [prompt_last, *range(start, start + r - 1)]
                targets += response
                rows += [i] * r
                columns += range(p - 1, p - 1 + r)
        if not targets:
            raise ValueError("packed forward needs at least one response token in the micro-batch")
        as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
        return cls(
            input_ids=as_long(ids)[None],
            positions=as_long(positions)[None],
            segment=as_long(segment),
            home=as_long(home),
            score_at=as_long(score_at),
            targets=as_long(targets),
            rows=as_long(rows),
            columns=as_long(columns),
            target_shape=(len(mb), mb.targets.shape[1]),
        )

    def allowed(self) -> torch.Tensor:
        """[n, n] bool: query i may attend to key j (j <= i, and j in i's own segment or i's prompt)."""
        n = self.segment.shape[0]
        causal = torch.arange(n)[None, :] <= torch.arange(n)[:, None]
        same = (self.segment[None, :] == self.segment[:, None]) | (self.segment[None, :] == self.home[:, None])
        return causal & same

    def attention_mask(self, dtype: torch.dtype, device=torch.device("cpu")) -> torch.Tensor:
        """[1, 1, n, n] additive mask (0 where allowed, the dtype's lowest value elsewhere): the form Hugging
        Face models take as given and both eager (adds it to the scores) and sdpa attention accept."""
        blocked = ~self.allowed().to(device)
        mask = torch.zeros(blocked.shape, dtype=dtype, device=device)
        return mask.masked_fill_(blocked, torch.finfo(dtype).min)[None, None]

    def place(self, values: torch.Tensor) -> torch.Tensor:
        """[m] per-response-token values -> the micro-batch's [b, w-1] target layout (0 elsewhere);
        differentiable."""
        out = values.new_zeros(self.target_shape)
        return out.index_put((self.rows.to(values.device), self.columns.to(values.device)), values)
