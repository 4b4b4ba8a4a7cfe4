"""Shared-prompt forward: layout checked by hand, cost model by hand, and logprobs and gradients equal to
the plain prompt + response forward on a real (tiny, random) Llama."""
import math
import pytest
import torch

from learner.batching import collate, micro_batch_rows
from learner.logprobs import batch_logprobs, micro_batch_logprobs, shared_prompt_logprobs
from learner.micro_batch_plan import (
    ForwardOptions, choose_forward, forward_costs, pass_overhead_tokens, plan_micro_batches, prompt_group_rows,
    shared_forward_tokens,
)
from learner.shared_prompt import SharedPromptLayout
from orchestrator.types import Episode, Problem


def _ep(prompt, response, group=0):
    return Episode(group_id=group, problem=Problem("u", "q", "1", "arithmetic"), prompt_token_ids=tuple(prompt),
                   response_token_ids=tuple(response), sampler_logprobs=tuple(-1.0 for _ in response),
                   response_text="", finish_reason="stop", policy_version=0, reward=0.0)


def _tiny_llama(attn="eager"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, attn_implementation=attn)
    return LlamaForCausalLM(cfg).float()


def test_layout_by_hand():
    # rows 0 and 2 share prompt [5, 6]; row 1 has prompt [7]
    mb = collate([_ep([5, 6], [8, 9, 10]), _ep([7], [11]), _ep([5, 6], [12, 13])])
    lay = SharedPromptLayout.build(mb, pad_id=0)
    # the prompt pass: each prompt but its last token, left-padded ([7] has nothing left)
    assert lay.prompt_ids.tolist() == [[5], [0]] and lay.prompt_mask.tolist() == [[1], [0]]
    assert lay.prompt_positions.tolist() == [[0], [0]]
    assert lay.owner.tolist() == [0, 1, 0]
    # the response pass: the prompt's last token, then the response but its last token
    assert lay.input_ids.tolist() == [[6, 8, 9], [7, 0, 0], [6, 12, 0]]
    assert lay.targets.tolist() == [[8, 9, 10], [11, 0, 0], [12, 13, 0]]
    assert lay.positions.tolist() == [[1, 2, 3], [0, 1, 2], [1, 2, 3]]  # each row's own prompt length - 1 + t
    assert lay.attention_mask.tolist() == [[1, 1, 1, 1], [0, 1, 0, 0], [1, 1, 1, 0]]
    # targets [B, 4]: response token t of a row with prompt length p sits at p - 1 + t (clamped when padded)
    assert lay.target_index.tolist() == [[1, 2, 3], [0, 1, 2], [1, 2, 3]]
    placed = lay.place(torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [5.0, 6.0, 9.0]]))
    assert placed.tolist() == [[0, 1, 2, 3], [4, 0, 0, 0], [0, 5, 6, 0]]
    assert torch.equal(placed != 0, mb.response_mask.bool())


def _shares(mb, overhead):
    return choose_forward(mb, ForwardOptions(share_overhead=overhead)) == "shared"


def _plan(batch, size, overhead):
    return plan_micro_batches(batch, size, ForwardOptions(share_overhead=overhead))


def test_token_counts_and_choice_by_hand():
    # 4 rows of one 10-token prompt, responses 2, 3, 4, 5: plain 4 x 15 = 60, shared 9 + 4 x 5 = 29
    mb = collate([_ep(range(1, 11), range(20, 20 + r)) for r in (2, 3, 4, 5)])
    assert forward_costs(mb, ForwardOptions())["plain"] == 60 and shared_forward_tokens(mb) == 29
    assert _shares(mb, 0) and _shares(mb, 30)
    assert not _shares(mb, 31)  # saving exactly the extra pass's cost: not worth it
    assert not _shares(mb, None)  # sharing off
    # every row its own prompt: sharing only drops each row's last position (never scored), 4 tokens
    distinct = collate([_ep([i, i + 1], [30, 31]) for i in range(1, 5)])
    assert shared_forward_tokens(distinct) == 4 * 1 + 4 * 2 and forward_costs(distinct, ForwardOptions())["plain"] == 16
    assert not _shares(distinct, 4)


def test_plan_keeps_groups_together_only_when_cheaper():
    # two groups of 4 with interleaved response lengths: sorting by length mixes the groups
    long_prompt = collate([_ep(range(1 + g, 31 + g), range(40, 40 + r), g)
                           for g, rs in enumerate(((1, 3, 5, 7), (2, 4, 6, 8))) for r in rs])
    plain = micro_batch_rows(long_prompt, 4)
    grouped = prompt_group_rows(long_prompt, 4)
    assert grouped == [[0, 1, 2, 3], [4, 5, 6, 7]]  # one prompt per micro-batch, by response length
    assert sorted(map(len, plain)) == sorted(map(len, grouped)) == [4, 4]  # same count: same accumulation steps
    # grouped + shared: (29 + 4 x 7) + (29 + 4 x 8) = 118 tokens; the length-sorted split mixes the groups
    # (rows 0, 4, 1, 5 | 2, 6, 3, 7): (2 x 29 + 4 x 4) + (2 x 29 + 4 x 8) = 164
    assert plain == [[0, 4, 1, 5], [2, 6, 3, 7]]
    assert _plan(long_prompt, 4, 0) == [(rows, "shared") for rows in grouped]
    assert _plan(long_prompt, 4, None) == [(rows, "plain") for rows in plain]
    # with a 1000-token pass cost nothing is shared: plain forwards, 4 x 34 + 4 x 38 = 288 tokens for the
    # length-sorted split against 4 x 37 + 4 x 38 = 300 for the grouped one
    assert _plan(long_prompt, 4, 1000) == [(rows, "plain") for rows in plain]
    assert len(_plan(long_prompt, 3, 0)) == math.ceil(8 / 3)


def test_overhead_table():
    assert pass_overhead_tokens(False, torch.bfloat16) == 160
    assert pass_overhead_tokens(False, torch.float32) == 96
    assert pass_overhead_tokens(True, torch.bfloat16) > 0


def _mixed_batch():
    return collate([
        _ep([3, 4, 5, 6], [7, 8, 9, 10, 11]), _ep([3, 4, 5, 6], [12]), _ep([3, 4, 5, 6], [13, 14, 15]),
        _ep([20, 21], [22, 23, 24, 25]), _ep([20, 21], [26, 27]), _ep([30, 31, 32], [33, 34, 35, 36, 37, 38]),
    ])


def assert_matches_plain_forward(model, mb, forward):
    """``forward(mb)`` (temperature 0.7) gives the plain forward's logprobs on every response token, exact
    zeros elsewhere, and through them the same gradients."""
    mask = mb.response_mask
    plain = batch_logprobs(model, mb, temperature=0.7) * mask
    (plain * torch.linspace(0.5, 1.5, plain.shape[1])).sum().backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    other = forward(mb)
    assert other.shape == plain.shape
    assert torch.allclose(other, plain, atol=1e-5), (other - plain).abs().max()
    assert torch.all(other[mask == 0] == 0) and plain.abs().sum() > 0
    (other * torch.linspace(0.5, 1.5, other.shape[1])).sum().backward()
    for (name, p), g in zip(model.named_parameters(), plain_grads):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6), f"{name}: {(p.grad - g).abs().max():.2e}"


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_shared_forward_equals_plain_forward(attn):
    """For prompts of different lengths (left padding), a one-token response and a prompt with a single row."""
    model = _tiny_llama(attn)
    assert_matches_plain_forward(model, _mixed_batch(), lambda mb: shared_prompt_logprobs(model, mb, temperature=0.7))


@pytest.mark.parametrize("rows", [
    ([3, 4], [5], [3, 4], [6]),  # one-token responses: the response pass is the prompt's last token alone
    ([3], [5, 6], [4], [7]),  # one-token prompts: nothing to cache, the response pass holds everything
])
def test_edge_lengths_match_plain_forward(rows):
    model = _tiny_llama()
    mb = collate([_ep(rows[0], rows[1]), _ep(rows[2], rows[3])])
    with torch.no_grad():
        shared = shared_prompt_logprobs(model, mb, 1.0)
        plain = batch_logprobs(model, mb, 1.0) * mb.response_mask
    assert plain.abs().sum() > 0 and torch.allclose(shared, plain, atol=1e-6)


def test_micro_batch_logprobs_runs_the_forward_it_is_given():
    model = _tiny_llama()
    mb = _mixed_batch()
    calls = {"model": [], "decoder": []}
    model.register_forward_pre_hook(lambda m, args, kw: calls["model"].append(tuple(kw["input_ids"].shape)),
                                    with_kwargs=True)
    model.model.register_forward_pre_hook(lambda m, args, kw: calls["decoder"].append(tuple(kw["input_ids"].shape)),
                                          with_kwargs=True)
    with torch.no_grad():
        micro_batch_logprobs(model, mb, 1.0, "plain")
        assert calls == {"model": [(6, 9)], "decoder": [(6, 9)]}  # plain: one pass over prompt + response
        calls["model"].clear(), calls["decoder"].clear()
        micro_batch_logprobs(model, mb, 1.0, "shared")
        # shared: the decoder alone over the 3 distinct prompts (but their last token), then the whole
        # model over the 6 rows' prompt-last token + responses (6 wide)
        assert calls == {"model": [(6, 6)], "decoder": [(3, 3), (6, 6)]}
        calls["model"].clear(), calls["decoder"].clear()
        micro_batch_logprobs(model, mb, 1.0, "packed")
        # packed: one row, prompts 4 + 2 + 3 tokens and responses but their last 4 + 0 + 2 + 3 + 1 + 5
        assert calls == {"model": [(1, 24)], "decoder": [(1, 24)]}
        with pytest.raises(ValueError, match="unknown forward"):
            micro_batch_logprobs(model, mb, 1.0, "padded")


def test_no_cache_is_a_clear_error():
    model = _tiny_llama()
    model.gradient_checkpointing_enable()
    model.train()
    with pytest.raises(RuntimeError, match="learner.shared_prompt=false"):
        shared_prompt_logprobs(model, _mixed_batch(), 1.0)


@pytest.mark.parametrize("options", [ForwardOptions(share_overhead=0), ForwardOptions(pack=True)],
                         ids=["shared", "packed"])
def test_update_with_shared_prompts_equals_plain_update(options):
    """A whole GRPO update (run_updates: plan, forward, clipped loss with KL, backward) gives the same loss
    and gradient with and without a forward that shares prompts, and the plan really uses it."""
    from types import SimpleNamespace

    from learner.algorithm import outcome_advantages
    from learner.trainer import run_updates

    episodes = [_ep([1 + g, 2 + g, 3 + g, 4 + g, 5 + g], [10 + (g * 7 + i * 3) % 40 for i in range(1 + (g + i) % 6)], g)
                for g in range(3) for i in range(4)]
    batch = collate(episodes)
    batch.advantages = outcome_advantages(torch.tensor([float((i * 5) % 3 == 0) for i in range(12)]), 4)
    torch.manual_seed(2)
    old = (torch.randn_like(batch.response_mask) * 0.3 - 4.0) * batch.response_mask
    ref = (torch.randn_like(batch.response_mask) * 0.3 - 4.0) * batch.response_mask
    algo = SimpleNamespace(mu=1, clip_eps=0.2, kl_coef=0.04, kl_placement="loss", kl_estimator="k3",
                           loss_agg="seq-mean-token-mean")
    model = _tiny_llama()
    results = {}
    for name, opts in (("plain", ForwardOptions()), ("other", options)):
        model.zero_grad()
        sums = run_updates(batch, old.clone(), ref, False, algo, 4, (12, float(batch.response_mask.sum())),
                           lambda mb, forward: micro_batch_logprobs(model, mb, 1.0, forward),
                           lambda loss: loss.backward(), "test", options=opts)
        results[name] = (sums, torch.cat([p.grad.flatten() for p in model.parameters()]))
    (plain, g_plain), (other, g_other) = results["plain"], results["other"]
    used = "shared" if options.share_overhead is not None else "packed"
    assert plain["shared_rows"] == plain["packed_rows"] == 0 and other[f"{used}_rows"] == 12
    assert other["loss"] == pytest.approx(plain["loss"], rel=1e-5, abs=1e-7)
    assert g_plain.abs().sum() > 0 and torch.allclose(g_other, g_plain, rtol=1e-4, atol=1e-7)
