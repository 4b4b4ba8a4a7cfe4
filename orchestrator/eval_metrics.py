"""Sampling metrics for evaluation: unbiased pass@k and majority voting (maj@k). Standard library only."""
from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are right: 1 - C(n-c, k) / C(n, k) (Chen et al., 2021).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which never forms the large binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    result = 1.0
    for i in range(n - c + 1, n + 1):
        result *= 1.0 - k / i
    return 1.0 - result


def majority_correct(answers: Sequence[Optional[str]], correct: Sequence[bool]) -> bool:
    """maj@k for one question: the most common final answer (None votes for nothing; ties go to the
    answer seen first) is right if the samples that gave it are right."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers for {len(correct)} verdicts")
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return bool(correct[answers.index(winner)])


def ks_up_to(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself: the k of the pass@k table."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def sampling_summary(per_question: Sequence[tuple[Sequence[Optional[str]], Sequence[bool]]]) -> dict:
    """pass@k for k in ks_up_to(n) and maj@n, averaged over questions (n samples per question)."""
    if not per_question:
        return {}
    n = len(per_question[0][1])
    if any(len(c) != n for _, c in per_question):
        raise ValueError("every question needs the same number of samples")
    out = {f"pass@{k}": sum(pass_at_k(n, sum(c), k) for _, c in per_question) / len(per_question) for k in ks_up_to(n)}
    out[f"maj@{n}"] = sum(majority_correct(a, c) for a, c in per_question) / len(per_question)
    return out
