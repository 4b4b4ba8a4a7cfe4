"""The chunked log-softmax: same logprobs and gradients as autograd's log_softmax, for any chunking,
temperature and dtype, and no fp32 copy of the logits kept for backward."""
import pytest
import torch

from learner.algorithm import token_logprobs
from learner.chunked_logprobs import ChunkedTokenLogprobs, chunk_tokens_for, chunked_token_logprobs


def _reference(logits, targets, temperature):
    """The plain path: upcast, log_softmax, gather (autograd's backward)."""
    return torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_match_log_softmax(chunk, temperature):
    g = torch.Generator().manual_seed(chunk)
    logits = torch.randn(3, 5, 11, generator=g, requires_grad=True)
    targets = torch.randint(0, 11, (3, 5), generator=g)
    weights = torch.randn(3, 5, generator=g)  # a loss that weighs every position differently
    mine = chunked_token_logprobs(logits, targets, temperature, chunk_tokens=chunk)
    (grad_mine,) = torch.autograd.grad((mine * weights).sum(), logits)
    ref = _reference(logits, targets, temperature)
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), logits)
    assert mine.dtype == torch.float32 and torch.allclose(mine, ref, atol=1e-6)
    assert torch.allclose(grad_mine, grad_ref, atol=1e-6)


def test_hand_computed_gradient_and_gradcheck():
    logits = torch.zeros(1, 2, 4, requires_grad=True)
    token_logprobs(logits, torch.tensor([[1, 3]])).sum().backward()
    # uniform over 4: d log p_k / d logit_j = 1[j=k] - 1/4
    assert logits.grad.tolist() == [[[-0.25, 0.75, -0.25, -0.25], [-0.25, -0.25, -0.25, 0.75]]]
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 5, (6,))
    assert torch.autograd.gradcheck(lambda z: ChunkedTokenLogprobs.apply(z, t, 0.8, 4), (x,))


def test_bf16_logits_give_fp32_logprobs_and_a_bf16_gradient():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 9, generator=g).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 9, (2, 4), generator=g)
    mine = chunked_token_logprobs(logits, targets, 1.0, chunk_tokens=3)
    mine.sum().backward()
    ref_logits = logits.detach().float().requires_grad_()
    _reference(ref_logits, targets, 1.0).sum().backward()
    assert mine.dtype == torch.float32 and torch.allclose(mine, _reference(logits.detach(), targets, 1.0), atol=1e-6)
    assert logits.grad.dtype == torch.bfloat16
    assert torch.allclose(logits.grad.float(), ref_logits.grad, atol=1e-2)  # bf16 rounding of the gradient


def _saved_bytes(fn, logits, targets):
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(logits, targets).sum()
    return saved[0]


def test_no_fp32_copy_of_the_logits_is_kept_for_backward():
    rows, positions, vocab = 4, 16, 512
    logits = torch.randn(rows, positions, vocab).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, vocab, (rows, positions))
    fp32_copy = rows * positions * vocab * 4
    plain = _saved_bytes(lambda x, t: _reference(x, t, 1.0), logits, targets)
    mine = _saved_bytes(lambda x, t: chunked_token_logprobs(x, t, 1.0, chunk_tokens=8), logits, targets)
    assert plain >= fp32_copy  # autograd keeps the upcast log-softmax for backward
    # the logits as given (bf16), the targets and one fp32 log-sum-exp per position
    assert mine == logits.numel() * 2 + targets.numel() * 8 + rows * positions * 4


def test_chunk_size_from_the_vocabulary():
    assert chunk_tokens_for(49152) == (64 << 20) // (4 * 49152) == 341
    assert chunk_tokens_for(1 << 30) == 1
