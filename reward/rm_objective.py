"""The reward-model objective and its quality measures (pure torch).

Pointwise: every labelled position (the last token for an outcome model, each step's last token
for a process model) is a binary example, trained with cross-entropy on the head's logit
(Math-Shepherd trains its PRM this way; an ORM trained so predicts P(correct)).
"""
from __future__ import annotations

import torch


def pointwise_loss(logits: torch.Tensor, labels: torch.Tensor, num_targets: int | None = None) -> torch.Tensor:
    """Binary cross-entropy of 1-D ``logits`` against ``labels`` in [0, 1] (soft labels allowed).

    Summed and divided by ``num_targets`` (default: this batch's count), so micro-batches of one
    optimizer step can share one denominator.
    """
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in shape")
    total = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="sum")
    return total / max(num_targets if num_targets is not None else labels.numel(), 1)


def binary_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of positions where the prediction (logit > 0) matches the label (>= 0.5)."""
    if labels.numel() == 0:
        return float("nan")
    return float(((logits > 0) == (labels >= 0.5)).float().mean())


def ranking_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """AUC: probability that a random positive outranks a random negative (ties count half).

    0.5 is chance whatever the class balance; NaN when one class is absent.
    """
    pos, neg = logits[labels >= 0.5], logits[labels < 0.5]
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())
