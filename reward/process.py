"""Process supervision with rule-based step rewards (a stand-in until a process reward model scores steps).

Each response is cut into reasoning steps (``reward.steps``); every step gets a reward from
``arithmetic_step_rewards`` (equations checked, the last step graded by the outcome verifier), and
the step boundaries are stored as token indices, which is what the learner's
``process_advantages`` consumes.
"""
from __future__ import annotations

from typing import Sequence

from orchestrator.types import Episode
from reward.steps import arithmetic_step_rewards, step_token_ends


def step_texts(tokenizer, token_ids: Sequence[int], ends: Sequence[int]) -> list[str]:
    """The text of each step, decoded from its own token span."""
    texts, start = [], 0
    for end in ends:
        texts.append(tokenizer.decode(list(token_ids[start : end + 1]), skip_special_tokens=True))
        start = end + 1
    return texts


def with_rule_step_rewards(episodes: Sequence[Episode], tokenizer, separator: str,
                           correct_reward: float, incorrect_reward: float) -> list[Episode]:
    out = []
    for ep in episodes:
        ends = step_token_ends(tokenizer, ep.response_token_ids, separator)
        texts = step_texts(tokenizer, ep.response_token_ids, ends)
        rewards = arithmetic_step_rewards(texts, ep.correct, correct_reward, incorrect_reward) if ends else []
        out.append(ep.with_steps(rewards, ends))
    return out
