"""The learner's update loop gives the same gradient for any micro-batch size (and so any split
of the step over learner ranks), for every loss aggregation, with outcome and process advantages."""
import random
from types import SimpleNamespace

import pytest
import torch

from learner.algorithm import outcome_advantages
from learner.batching import collate
from learner.trainer import run_updates
from orchestrator.types import Episode, Problem


def _tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).float()


def _episodes(n=8, group_size=4):
    rng = random.Random(1)
    out = []
    for i in range(n):
        prompt = tuple(rng.randrange(1, 64) for _ in range(rng.randint(2, 5)))
        length = rng.randint(1, 9)  # uneven lengths: token counts differ per micro-batch
        response = tuple(rng.randrange(1, 64) for _ in range(length))
        ends = tuple(sorted(set([length - 1] + [rng.randrange(length) for _ in range(2)])))
        out.append(Episode(group_id=i // group_size, problem=Problem("u", "q", "1", "arithmetic"),
                           prompt_token_ids=prompt, response_token_ids=response,
                           sampler_logprobs=tuple(-1.0 for _ in response), response_text="", finish_reason="stop",
                           policy_version=0, reward=float(rng.random() > 0.5),
                           step_rewards=tuple(float(rng.random() > 0.5) for _ in ends), step_ends=ends))
    return out


def _grads(model, batch, algo, micro_batch_size, old, ref):
    from learner.algorithm import token_logprobs

    model.zero_grad()
    counts = (len(batch), float(batch.response_mask.sum()))

    def forward(mb, name):
        assert name == "plain"  # run_updates' default options allow nothing else
        logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
        return token_logprobs(logits[:, :-1], mb.targets)

    sums = run_updates(batch, old.clone(), ref, False, algo, micro_batch_size, counts, forward,
                       lambda loss: loss.backward(), "test")
    return torch.cat([p.grad.flatten() for p in model.parameters()]), sums["loss"]


@pytest.mark.parametrize("loss_agg", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("supervision", ["outcome", "process"])
def test_gradient_does_not_depend_on_micro_batch_size(loss_agg, supervision):
    from learner.algorithm import process_advantages

    model = _tiny_model()
    episodes = _episodes()
    batch = collate(episodes)
    if supervision == "outcome":
        batch.advantages = outcome_advantages(batch.rewards, 4)
    else:
        batch.advantages = batch.scatter_response(process_advantages(
            batch.step_rewards, batch.step_ends, batch.response_lengths, 4))
    # old/ref differ from the policy so the ratio, the clip and the KL all take part
    torch.manual_seed(2)
    old = (torch.randn_like(batch.response_mask) * 0.3 - 4.0) * batch.response_mask
    ref = (torch.randn_like(batch.response_mask) * 0.3 - 4.0) * batch.response_mask
    algo = SimpleNamespace(mu=1, clip_eps=0.2, kl_coef=0.04, kl_placement="loss", kl_estimator="k3", loss_agg=loss_agg)
    full, full_loss = _grads(model, batch, algo, 8, old, ref)
    assert full.abs().sum() > 0
    for mbs in (1, 2, 4):
        g, loss = _grads(model, batch, algo, mbs, old, ref)
        assert loss == pytest.approx(full_loss, rel=1e-5, abs=1e-7)
        assert torch.allclose(g, full, rtol=1e-4, atol=1e-7), f"micro-batch {mbs}: max diff {(g - full).abs().max():.2e}"
