"""Reward-model loss and quality measures against hand-computed values."""
import math

import pytest
import torch

from reward.rm_objective import binary_accuracy, pointwise_loss, ranking_accuracy


def test_pointwise_loss_is_binary_cross_entropy():
    logits = torch.tensor([0.0, 2.0, -1.0])
    labels = torch.tensor([1.0, 0.0, 0.5])
    # -log s(0) = ln 2;  -log(1 - s(2)) = ln(1 + e^2);  soft 0.5 on -1: 0.5*ln(1+e) + 0.5*ln(1+e^-1)
    expected = (math.log(2) + math.log(1 + math.e**2) + 0.5 * math.log(1 + math.e) + 0.5 * math.log(1 + math.e**-1)) / 3
    assert float(pointwise_loss(logits, labels)) == pytest.approx(expected, rel=1e-6)
    assert float(pointwise_loss(logits, labels, num_targets=6)) == pytest.approx(expected / 2, rel=1e-6)
    with pytest.raises(ValueError):
        pointwise_loss(logits, labels[:2])


def test_accuracy_and_auc():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert binary_accuracy(logits, labels) == pytest.approx(0.5)  # right on 2.0 and -3.0
    # positives {2, -1} vs negatives {0.5, -3}: 2>0.5, 2>-3, -1<0.5, -1>-3 -> 3/4
    assert ranking_accuracy(logits, labels) == pytest.approx(0.75)
    assert ranking_accuracy(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == pytest.approx(0.5)  # tie
    assert math.isnan(ranking_accuracy(logits, torch.ones(4)))
