"""Packed forward: layout and mask checked by hand, the cost-based choice by hand, and logprobs and gradients
equal to the plain prompt + response forward on a real (tiny, random) Llama."""
from types import SimpleNamespace

import pytest
import torch

from learner.batching import collate
from learner.logprobs import batch_logprobs, packed_logprobs
from learner.micro_batch_plan import (
    ForwardOptions, attention_pair_weight, choose_forward, forward_costs, plan_micro_batches,
)
from learner.packing import PackedLayout, packed_tokens
from learner.trainer import PolicyTrainer
from orchestrator.config import ConfigError, load_config
from tests.learner.test_shared_prompt import _ep, _mixed_batch, _tiny_llama, assert_matches_plain_forward


def test_layout_by_hand():
    # rows 0 and 2 share prompt [5, 6]; row 1 has prompt [7]; row 3 (prompt [5, 6]) has no response
    mb = collate([_ep([5, 6], [8, 9, 10]), _ep([7], [11]), _ep([5, 6], [12, 13]), _ep([5, 6], [])])
    lay = PackedLayout.build(mb)
    # prompt [5, 6], row 0's response but its last token, row 2's likewise, then prompt [7] (row 1: nothing)
    assert lay.input_ids.tolist() == [[5, 6, 8, 9, 12, 7]]
    assert lay.positions.tolist() == [[0, 1, 2, 3, 2, 0]]
    assert lay.segment.tolist() == [0, 0, 1, 1, 2, 3] and lay.home.tolist() == [0, 0, 0, 0, 0, 3]
    assert packed_tokens(mb) == 6
    # response tokens row by row (grouped by prompt), the packed position whose logits score each,
    # and where each lands in the [4, 4] target layout (response token t of a row at prompt length - 1 + t)
    assert lay.targets.tolist() == [8, 9, 10, 12, 13, 11]
    assert lay.score_at.tolist() == [1, 2, 3, 1, 4, 5]
    assert lay.rows.tolist() == [0, 0, 0, 2, 2, 1] and lay.columns.tolist() == [1, 2, 3, 1, 2, 0]
    allowed = lay.allowed().int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],  # 5: itself
        [1, 1, 0, 0, 0, 0],  # 6: its prompt
        [1, 1, 1, 0, 0, 0],  # 8 (row 0): the prompt and itself
        [1, 1, 1, 1, 0, 0],  # 9 (row 0)
        [1, 1, 0, 0, 1, 0],  # 12 (row 2): the prompt, not row 0's response
        [0, 0, 0, 0, 0, 1],  # 7: another prompt sees nothing before it
    ]
    mask = lay.attention_mask(torch.bfloat16)
    assert mask.shape == (1, 1, 6, 6) and mask.dtype == torch.bfloat16
    assert mask[0, 0, 4, 1] == 0 and mask[0, 0, 4, 2] == torch.finfo(torch.bfloat16).min
    placed = lay.place(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    assert placed.tolist() == [[0, 1, 2, 3], [6, 0, 0, 0], [0, 4, 5, 0], [0, 0, 0, 0]]
    assert torch.equal(placed != 0, mb.response_mask.bool())
    with pytest.raises(ValueError, match="at least one response token"):
        PackedLayout.build(collate([_ep([5, 6], [])]))


def test_costs_and_choice_by_hand():
    # 4 rows of one 10-token prompt, responses 2, 3, 4, 5: plain 4 x 15 = 60 tokens, packed 10 + 1+2+3+4 = 20
    mb = collate([_ep(range(1, 11), range(20, 20 + r)) for r in (2, 3, 4, 5)])
    assert packed_tokens(mb) == 20
    assert forward_costs(mb, ForwardOptions()) == {"plain": 60}
    assert forward_costs(mb, ForwardOptions(pack=True)) == {"plain": 60, "packed": 20}
    assert choose_forward(mb, ForwardOptions(pack=True)) == "packed"
    # attention: plain 4 rows x 15^2 = 900 pairs, packed 20^2 = 400; with 0.1 token per pair:
    # plain 60 + 90 = 150, packed 20 + 40 = 60
    costs = forward_costs(mb, ForwardOptions(pack=True, pair_weight=0.1))
    assert costs["plain"] == pytest.approx(150) and costs["packed"] == pytest.approx(60)
    # packing loses once rows are long: one 10-token prompt, 4 responses of 40
    long = collate([_ep(range(1, 11), range(20, 60)) for _ in range(4)])  # plain 4 x 50, packed 10 + 4 x 39 = 166
    assert choose_forward(long, ForwardOptions(pack=True, pair_weight=0.0)) == "packed"
    # plain 200 + 0.1 x 4 x 2500 = 1200; packed 166 + 0.1 x 166^2 = 2921.6
    assert choose_forward(long, ForwardOptions(pack=True, pair_weight=0.1)) == "plain"
    assert choose_forward(mb, ForwardOptions(pack=True, max_packed_tokens=19)) == "plain"  # too long to pack
    # the two-pass shared forward (29 tokens + its pass cost) against packing (20): packing wins
    assert choose_forward(mb, ForwardOptions(share_overhead=0, pack=True)) == "packed"


def test_plan_packs_prompt_groups():
    # two groups of 4 with interleaved response lengths: the length-sorted split mixes the groups,
    # the grouped one packs each prompt once: 30 + (0+2+4+6) = 42 and 30 + (1+3+5+7) = 46 tokens
    batch = collate([_ep(range(1 + g, 31 + g), range(40, 40 + r), g)
                     for g, rs in enumerate(((1, 3, 5, 7), (2, 4, 6, 8))) for r in rs])
    plan = plan_micro_batches(batch, 4, ForwardOptions(pack=True))
    assert plan == [([0, 1, 2, 3], "packed"), ([4, 5, 6, 7], "packed")]
    assert [packed_tokens(batch.select(rows)) for rows, _ in plan] == [42, 46]


def test_attention_pair_weight_by_hand():
    config = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, hidden_size=576)  # SmolLM2-135M
    # 2 x 30 layers x 9 heads x 64 = 34560 multiply-adds per pair against one per linear parameter
    assert attention_pair_weight(config, 34560 * 1000) == pytest.approx(1e-3)
    model = _tiny_llama()
    linear = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    assert attention_pair_weight(model.config, linear) == pytest.approx(2 * 2 * 4 * 8 / linear)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("window", [True, False])
def test_packed_forward_equals_plain_forward(attn, window):
    """For prompts of different lengths, a one-token response and a prompt with a single row; with the LM head
    over only the scoring positions (``logits_to_keep``) or over all of them."""
    model = _tiny_llama(attn)
    assert_matches_plain_forward(model, _mixed_batch(),
                                 lambda mb: packed_logprobs(model, mb, temperature=0.7, window=window))


def test_packed_forward_under_gradient_checkpointing():
    model = _tiny_llama()
    model.gradient_checkpointing_enable()
    model.train()
    mb = _mixed_batch()
    packed = packed_logprobs(model, mb, 1.0)
    packed.sum().backward()
    with torch.no_grad():
        plain = batch_logprobs(model, mb, 1.0) * mb.response_mask
    assert torch.allclose(packed.detach(), plain, atol=1e-5)
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_attention_without_4d_masks_is_a_clear_error():
    model = _tiny_llama()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(RuntimeError, match="learner.packed_sequences=false"):
        packed_logprobs(model, _mixed_batch(), 1.0)


def _options(overrides, on_gpu=False, world_size=1, zero_stage=0):
    trainer = SimpleNamespace(cfg=load_config(None, overrides), on_gpu=on_gpu, dtype=torch.float32, pair_weight=0.5,
                              world_size=world_size, zero_stage=zero_stage)
    return PolicyTrainer._forward_options(trainer)


def test_trainer_forward_options():
    reference, policy_eval, train = _options([])
    assert reference == policy_eval == train == ForwardOptions(share_overhead=96, pack=True, pair_weight=0.5)
    reference, _, train = _options([], on_gpu=True)
    assert not reference.pack and reference.share_overhead == 128  # GPU: packing not measured, off unless asked
    assert _options(["learner.packed_sequences=true"], on_gpu=True)[0].pack
    assert not any(o.pack for o in _options(["learner.packed_sequences=false"]))
    assert not _options(["learner.attn_implementation=flash_attention_2"])[0].pack
    # gradient checkpointing keeps no cache in training: no shared prompts there, but packing (one pass) stays
    reference, policy_eval, train = _options(["learner.gradient_checkpointing=true"])
    assert policy_eval.share_overhead == 96 and train.share_overhead is None and train.pack
    # ZeRO-3 over several ranks: the policy's passes must match across ranks; packing is one pass
    reference, policy_eval, train = _options([], world_size=2, zero_stage=3)
    assert reference.share_overhead == 96 and policy_eval.share_overhead is None and policy_eval.pack and train.pack


def test_packed_sequences_config():
    assert load_config(None, []).learner.packed_sequences is None
    assert load_config(None, ["learner.packed_sequences=false"]).learner.packed_sequences is False
    with pytest.raises(ConfigError, match="learner.packed_sequences"):
        load_config(None, ["learner.packed_sequences=true", "learner.attn_implementation=flash_attention_2"])


def test_plan_without_prompt_lengths_stays_plain():
    # a TokenBatch built without prompt lengths cannot share or pack prompts: the length-sorted plain split
    batch = collate([_ep([1, 2], [3, 4, 5]), _ep([1, 2], [6]), _ep([7], [8, 9])])
    batch.prompt_lengths = []
    plan = plan_micro_batches(batch, 2, ForwardOptions(share_overhead=0, pack=True, pair_weight=0.01))
    assert plan == [([1, 2], "plain"), ([0], "plain")]
