"""Padding episodes into learner tensors: positions checked by hand."""
import pytest
import torch

from learner.batching import collate


def test_collate_positions():
    # row 0: prompt [5, 6], response [7, 8, 9]; row 1: prompt [5], response [4]
    b = collate([[5, 6], [5]], [[7, 8, 9], [4]], [[-0.1, -0.2, -0.3], [-0.4]], [1.5, -1.5], pad_token_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 4, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b.targets.tolist() == [[6, 7, 8, 9], [4, 0, 0, 0]]
    # target t scores token t+1; response tokens of row 0 are targets 1..3, of row 1 target 0
    assert b.response_mask.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]
    assert torch.allclose(b.sampler_logprobs, torch.tensor([[0, -0.1, -0.2, -0.3], [-0.4, 0, 0, 0]]))
    assert b.advantages.tolist() == [1.5, -1.5]


def test_slice_trims_padding():
    b = collate([[5, 6], [5]], [[7, 8, 9], [4]], [[-0.1, -0.2, -0.3], [-0.4]], [1.0, 2.0])
    s = b.slice(1, 2)
    assert s.input_ids.tolist() == [[5, 4]] and s.targets.tolist() == [[4]] and s.response_mask.tolist() == [[1]]


def test_collate_rejects_mismatched_logprobs():
    with pytest.raises(ValueError, match="row 0: 1 sampler logprobs for 2 response tokens"):
        collate([[1]], [[2, 3]], [[-0.1]], [0.0])
