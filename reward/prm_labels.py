"""Math-Shepherd step labels for process reward model training (no model, no Ray).

A step is good if the answer can still be reached from it: from the prefix that ends with step j,
sample N completions with the current policy and grade each with the rule verifier
(Wang et al., 2024, "Math-Shepherd"). 'hard' labels step j with 1 if any completion is right,
'soft' with the fraction that are. The sampled response itself is one completion of each of its
prefixes, so under 'hard' every step of a correct response is 1 without any sampling, and only
the non-final steps of wrong responses are expanded. The last step is graded by the outcome.

``expansion_plan`` says which prefixes to sample from; the orchestrator samples and grades them;
``step_labels`` turns the counts into labels.
"""
from __future__ import annotations

from typing import Sequence

from orchestrator.types import Episode

Prefix = tuple[int, int]
"""(episode index, step index): the prefix ending with that step."""


def expansion_plan(episodes: Sequence[Episode], steps: Sequence[tuple[Sequence[int], Sequence[str]]],
                   mode: str, max_prefixes: int) -> list[Prefix]:
    """The prefixes worth sampling from, at most ``max_prefixes``, wrong responses first."""
    if mode not in ("hard", "soft"):
        raise ValueError(f"label mode must be 'hard' or 'soft', got {mode!r}")
    plan: list[Prefix] = []
    order = sorted(range(len(episodes)), key=lambda i: episodes[i].correct)  # wrong ones first (stable)
    for i in order:
        if mode == "hard" and episodes[i].correct:
            continue
        plan.extend((i, j) for j in range(len(steps[i][0]) - 1))
    return plan[:max_prefixes]


def prefix_token_ids(episode: Episode, ends: Sequence[int], step: int) -> list[int]:
    """Prompt plus the response up to and including the last token of ``step``."""
    return list(episode.prompt_token_ids) + list(episode.response_token_ids[: ends[step] + 1])


def step_labels(episodes: Sequence[Episode], steps: Sequence[tuple[Sequence[int], Sequence[str]]],
                plan: Sequence[Prefix], correct_counts: Sequence[int], rollouts: int, mode: str) -> list[tuple[float, ...]]:
    """Per episode, one label per step. Prefixes not in the plan get the outcome label.

    ``correct_counts[k]`` is how many of the ``rollouts`` completions of ``plan[k]`` were right; the
    response itself counts as one more completion of each of its prefixes.
    """
    if len(plan) != len(correct_counts):
        raise ValueError(f"{len(correct_counts)} completion counts for {len(plan)} planned prefixes")
    counts = dict(zip(plan, correct_counts))
    out = []
    for i, (ep, (ends, _)) in enumerate(zip(episodes, steps)):
        outcome = 1.0 if ep.correct else 0.0
        labels = []
        for j in range(len(ends)):
            if j == len(ends) - 1 or (i, j) not in counts:
                labels.append(outcome)
                continue
            right = counts[(i, j)] + (1 if ep.correct else 0)
            total = rollouts + 1
            labels.append(float(right > 0) if mode == "hard" else right / total)
        out.append(tuple(labels))
    return out
