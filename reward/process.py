"""Reasoning steps of sampled responses, in the policy's tokens, for process supervision.

``segment`` cuts every response into steps (``reward.steps``) and returns, per episode, the index
of each step's last response token (what the learner's ``process_advantages`` consumes) and the
text of each step, decoded from its own token span (what rule step checks and the process reward
model score). The two therefore always have the same number of steps.
"""
from __future__ import annotations

from typing import Sequence

from orchestrator.types import Episode
from reward.steps import step_token_ends

Steps = tuple[list[int], list[str]]
"""(last response-token index of each step, text of each step)."""


def step_texts(tokenizer, token_ids: Sequence[int], ends: Sequence[int]) -> list[str]:
    """The text of each step, decoded from its own token span."""
    texts, start = [], 0
    for end in ends:
        texts.append(tokenizer.decode(list(token_ids[start : end + 1]), skip_special_tokens=True))
        start = end + 1
    return texts


def segment(episodes: Sequence[Episode], tokenizer, separator: str) -> list[Steps]:
    out = []
    for ep in episodes:
        ends = step_token_ends(tokenizer, ep.response_token_ids, separator)
        out.append((ends, step_texts(tokenizer, ep.response_token_ids, ends)))
    return out
