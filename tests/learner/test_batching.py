"""Padding episodes into learner tensors: positions checked by hand."""
import pytest
import torch

from learner.batching import collate
from orchestrator.types import Episode, Problem

P = Problem(uid="u", question="q", gold="1", task="arithmetic")


def _ep(prompt, response, logprobs, reward=0.0, steps=(), ends=()):
    return Episode(group_id=0, problem=P, prompt_token_ids=tuple(prompt), response_token_ids=tuple(response),
                   sampler_logprobs=tuple(logprobs), response_text="", finish_reason="stop", policy_version=0,
                   reward=reward, step_rewards=tuple(steps), step_ends=tuple(ends))


def _two_rows():
    # row 0: prompt [5, 6], response [7, 8, 9]; row 1: prompt [5], response [4]
    return collate([_ep([5, 6], [7, 8, 9], [-0.1, -0.2, -0.3], 1.0, (1.0, 0.0), (0, 2)), _ep([5], [4], [-0.4], 0.0)])


def test_collate_positions():
    b = _two_rows()
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 4, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b.targets.tolist() == [[6, 7, 8, 9], [4, 0, 0, 0]]
    # target t scores token t+1; response tokens of row 0 are targets 1..3, of row 1 target 0
    assert b.response_mask.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]
    assert torch.allclose(b.sampler_logprobs, torch.tensor([[0, -0.1, -0.2, -0.3], [-0.4, 0, 0, 0]]))
    assert b.rewards.tolist() == [1.0, 0.0]
    assert b.prompt_lengths == [2, 1] and b.response_lengths == [3, 1]
    assert b.step_ends[0].tolist() == [0, 2] and b.step_rewards[1].numel() == 0


def test_scatter_response_aligns_with_mask():
    b = _two_rows()
    placed = b.scatter_response([torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0])])
    assert placed.tolist() == [[0, 1, 2, 3], [4, 0, 0, 0]]
    assert torch.equal(placed != 0, b.response_mask.bool())


def test_select_trims_padding():
    s = _two_rows().select([1])
    assert s.input_ids.tolist() == [[5, 4]] and s.targets.tolist() == [[4]] and s.response_mask.tolist() == [[1]]
    assert s.rewards.tolist() == [0.0] and s.prompt_lengths == [1]


def test_collate_rejects_mismatched_logprobs():
    with pytest.raises(ValueError, match=r"row 0 \(u\): 1 sampler logprobs for 2 response tokens"):
        collate([_ep([1], [2, 3], [-0.1])])


def test_micro_batch_rows_groups_similar_lengths():
    from learner.batching import micro_batch_rows

    # total lengths 5, 2, 7, 3, 4 -> sorted rows 1 (2), 3 (3), 4 (4), 0 (5), 2 (7)
    eps = [_ep([5, 6], [7, 8, 9], [0.0] * 3), _ep([5], [4], [0.0]), _ep([1, 2, 3], [4, 5, 6, 7], [0.0] * 4),
           _ep([1, 2], [3], [0.0]), _ep([1], [2, 3, 4], [0.0] * 3)]
    b = collate(eps)
    assert micro_batch_rows(b, 2) == [[1, 3], [4, 0], [2]]
    assert sorted(r for mb in micro_batch_rows(b, 3) for r in mb) == [0, 1, 2, 3, 4]
    mb = b.select([1, 3])  # lengths 2 and 3: trimmed to width 3, rows in the given order
    assert mb.input_ids.tolist() == [[5, 4, 0], [1, 2, 3]]
    assert mb.response_mask.tolist() == [[1, 0], [0, 1]]
    assert mb.prompt_lengths == [1, 2] and mb.response_lengths == [1, 1]
    # first target that scores a response token: min prompt length - 1
    assert mb.response_window() == 0 and b.select([2, 0]).response_window() == 1


def test_windowed_logprobs_equal_full_logits():
    """Computing the LM head only from the response window gives the full-logit logprobs on every
    response token, and exact zeros before the window."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from learner.logprobs import batch_logprobs

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    b = collate([_ep([5, 6, 7], [8, 9], [0.0] * 2), _ep([1, 2, 3, 4], [5, 6, 7], [0.0] * 3)])
    assert b.response_window() == 2
    with torch.no_grad():
        full = batch_logprobs(model, b, temperature=0.7, window=False)
        windowed = batch_logprobs(model, b, temperature=0.7, window=True)
    mask = b.response_mask.bool()
    assert torch.allclose(windowed[mask], full[mask], atol=1e-6)
    assert windowed[:, :2].abs().sum() == 0 and full[:, :2].abs().sum() > 0
    assert windowed.shape == full.shape == b.targets.shape


def test_attention_choice_by_width():
    from learner.logprobs import EAGER_ATTENTION_MAX_TOKENS, attention_for_width

    assert attention_for_width("auto", 130, on_gpu=False) == "eager"
    assert attention_for_width("auto", EAGER_ATTENTION_MAX_TOKENS, on_gpu=False) == "eager"
    assert attention_for_width("auto", EAGER_ATTENTION_MAX_TOKENS + 1, on_gpu=False) == "sdpa"
    assert attention_for_width("auto", 130, on_gpu=True) is None  # GPU keeps transformers' default
    assert attention_for_width("sdpa", 10, on_gpu=False) == "sdpa"


def test_switching_attention_keeps_logprobs():
    """The eager kernel the learner switches to for short micro-batches gives sdpa's logprobs (padding included)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from learner.logprobs import EAGER_ATTENTION_MAX_TOKENS, batch_logprobs, switch_attention

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    b = collate([_ep([5, 6, 7], [8, 9], [0.0] * 2), _ep([1, 2, 3, 4], [5, 6, 7, 8, 9], [0.0] * 5)])
    with torch.no_grad():
        sdpa = batch_logprobs(model, b, temperature=1.0)
        assert switch_attention(model, "auto", b.input_ids.shape[1], on_gpu=False) == "auto"
        assert model.config._attn_implementation == "eager"
        eager = batch_logprobs(model, b, temperature=1.0)
    assert torch.allclose(sdpa, eager, atol=1e-5) and sdpa.abs().sum() > 0
    switch_attention(model, "auto", EAGER_ATTENTION_MAX_TOKENS + 1, on_gpu=False)  # a wide micro-batch: back to sdpa
    assert model.config._attn_implementation == "sdpa"
