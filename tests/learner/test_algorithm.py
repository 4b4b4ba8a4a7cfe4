"""Tests for learner.algorithm against hand-computed values.

Expected numbers are literals worked out by hand (calculator arithmetic shown
in comments); the tests never re-implement the formulas they check.
"""

import math
import warnings

import pytest
import torch

from learner.algorithm import grpo_loss, k3_kl, masked_mean, outcome_advantages, token_logprobs

# Constants used below (calculator):
#   e^-1 = 0.36787944   e^0.5 = 1.64872127   e^-0.5 = 0.60653066
#   e^0.1 = 1.10517092  e^0.2 = 1.22140276   sqrt(1/3) = 0.57735027


def close(t, expected, atol=1e-6):
    return torch.allclose(torch.as_tensor(t, dtype=torch.float64),
                          torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


# ----------------------------------------------------------------- advantages

def test_outcome_advantages_hand_values():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = outcome_advantages(r, group_size=4)
    # group 1: mean 0.5, deviations +-0.5, var = 4*0.25/3 = 1/3, std = 0.57735027
    # adv = 0.5 / (0.57735027 + 1e-6) = 0.8660239 ; group 2 all equal -> exact 0
    assert adv.shape == (8,)
    assert close(adv, [0.866024, -0.866024, -0.866024, 0.866024, 0, 0, 0, 0], atol=1e-5)
    assert torch.equal(adv[4:], torch.zeros(4))


def test_outcome_advantages_uneven_group():
    # [3, 0, 0]: mean 1, deviations [2, -1, -1], var = (4+1+1)/2 = 3, std = 1.7320508
    # adv = [2/1.7320508, -1/1.7320508, -1/1.7320508] = [1.1547005, -0.5773503, -0.5773503]
    adv = outcome_advantages(torch.tensor([3.0, 0.0, 0.0]), group_size=3, eps=0.0)
    assert close(adv, [1.1547005, -0.5773503, -0.5773503], atol=1e-6)


def test_outcome_advantages_all_equal_and_group_size_one_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a1 = outcome_advantages(torch.tensor([0.3, 0.7, 1.0]), group_size=1)
        a2 = outcome_advantages(torch.tensor([0.1, 0.1, 0.1, 5.0, 5.0, 5.0]), group_size=3)
    assert torch.equal(a1, torch.zeros(3))
    assert torch.equal(a2, torch.zeros(6))
    assert not torch.isnan(a1).any() and not torch.isnan(a2).any()


def test_outcome_advantages_wrong_length_raises():
    with pytest.raises(ValueError):
        outcome_advantages(torch.zeros(7), group_size=4)
    with pytest.raises(ValueError):
        outcome_advantages(torch.zeros(2, 4), group_size=4)


# ----------------------------------------------------------------------- k3

def test_k3_kl_hand_values():
    logp = torch.tensor([-1.0, -1.5, -0.4])
    ref = torch.tensor([-2.0, -1.5, -0.2])
    # ref-logp = -1  : e^-1 + 1 - 1 = 0.36787944
    # ref-logp =  0  : 1 - 0 - 1   = 0
    # ref-logp = 0.2 : 1.22140276 - 0.2 - 1 = 0.02140276
    assert close(k3_kl(logp, ref), [0.36787944, 0.0, 0.02140276], atol=1e-6)


# ------------------------------------------------------------ token_logprobs

def test_token_logprobs_hand_values_and_temperature():
    # logits [0, ln2, ln3] -> softmax = [1, 2, 3] / 6
    row = [0.0, math.log(2.0), math.log(3.0)]
    logits = torch.tensor([[row, row, row]])  # [1, 3, 3]
    targets = torch.tensor([[0, 1, 2]])
    lp = token_logprobs(logits, targets)
    # ln(1/6) = -1.7917595, ln(2/6) = -1.0986123, ln(3/6) = -0.6931472
    assert lp.shape == (1, 3)
    assert close(lp, [[-1.7917595, -1.0986123, -0.6931472]], atol=1e-6)
    # T=2: exp(logits/2) = [1, sqrt2, sqrt3] = [1, 1.4142136, 1.7320508], sum 4.1462644
    # ln(1.7320508/4.1462644) = ln(0.4177376) = -0.8729016 ; ln(1/4.1462644) = -1.4222078
    lp2 = token_logprobs(logits, torch.tensor([[2, 0, 2]]), temperature=2.0)
    assert close(lp2, [[-0.8729016, -1.4222078, -0.8729016]], atol=1e-6)


def test_token_logprobs_matches_manual_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=g)
    targets = torch.randint(0, 5, (2, 4), generator=g)
    for temp in (1.0, 0.7):
        ref = torch.log_softmax(logits / temp, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(token_logprobs(logits, targets, temperature=temp), ref, atol=1e-6)


def test_token_logprobs_grad_and_bf16():
    logits = torch.zeros(1, 2, 4, requires_grad=True)
    token_logprobs(logits, torch.tensor([[1, 3]])).sum().backward()
    # uniform over 4: d log p_k / d logit_j = 1[j=k] - 1/4
    assert close(logits.grad, [[[-0.25, 0.75, -0.25, -0.25], [-0.25, -0.25, -0.25, 0.75]]])
    lp = token_logprobs(torch.zeros(1, 2, 4, dtype=torch.bfloat16), torch.tensor([[0, 1]]))
    assert lp.dtype == torch.float32
    assert close(lp, [[-1.3862944, -1.3862944]])  # ln(1/4)


# --------------------------------------------------------------- masked_mean

def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, float("inf")], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert close(masked_mean(x, m), 1.5)  # (1+2)/2
    assert close(masked_mean(x, m, dim=-1), [1.5, 0.0])  # empty row -> 0
    assert close(masked_mean(x, m.bool(), dim=0), [1.0, 2.0, 0.0])


# ----------------------------------------------------------------- grpo_loss

def _example():
    # Row 0: A = +1, mask [1, 1, 0]; Row 1: A = -0.5, mask [1, 1, 1]
    logp = torch.tensor([[-1.0, -0.5, 0.0], [-2.0, -1.5, -0.4]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.0, -3.0], [-2.0, -1.0, -0.5]])
    ref = torch.tensor([[-2.0, -0.5, 0.0], [-2.0, -1.5, -0.2]])
    adv = torch.tensor([1.0, -0.5])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    return logp, old, ref, adv, mask


def test_grpo_loss_hand_example():
    logp, old, ref, adv, mask = _example()
    loss, met = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, kl_coef=0.04)
    # Row 0 (n=2):
    #  t0: ratio 1, pg 1*1 = 1, k3(ref-logp=-1) = 0.36787944
    #  t1: ratio e^0.5 = 1.6487213 > 1.2 and A>0 -> min(1.6487, 1.2) = 1.2 (CLIPPED), k3 0
    #  pg mean 1.1, kl mean 0.18393972, obj0 = 1.1 - 0.04*0.18393972 = 1.09264241
    # Row 1 (n=3):
    #  t0: ratio 1, pg -0.5, k3 0
    #  t1: ratio e^-0.5 = 0.6065307 < 0.8, A<0: unclipped -0.3032653, clipped 0.8*-0.5 = -0.4
    #      -> min = -0.4 (CLIPPED), k3 0
    #  t2: ratio e^0.1 = 1.1051709 (inside), pg -0.5*1.1051709 = -0.5525855, k3 0.02140276
    #  pg mean (-0.5-0.4-0.5525855)/3 = -0.4841952, kl mean 0.00713425
    #  obj1 = -0.4841952 - 0.04*0.00713425 = -0.4844805
    # loss = -(1.0926424 - 0.4844805)/2 = -0.3040809
    assert close(loss, -0.3040809, atol=1e-6)
    assert math.isclose(met["loss"], -0.3040809, abs_tol=1e-6)
    assert math.isclose(met["pg_loss"], -0.3079024, abs_tol=1e-6)  # -(1.1 - 0.4841952)/2
    assert math.isclose(met["kl"], 0.0955370, abs_tol=1e-6)  # (0.1839397 + 0.0071343)/2
    assert math.isclose(met["clip_frac"], 0.4, abs_tol=1e-9)  # 2 of 5 masked tokens
    # (1 + 1.6487213 + 1 + 0.6065307 + 1.1051709)/5 = 5.3604229/5
    assert math.isclose(met["ratio_mean"], 1.0720846, abs_tol=1e-6)
    assert math.isclose(met["ratio_max"], 1.6487213, abs_tol=1e-6)
    assert math.isclose(met["adv_mean"], 0.1, abs_tol=1e-6)  # (1+1-0.5*3)/5
    assert all(isinstance(v, float) for v in met.values())

    loss.backward()
    # d loss/d logp_t = -(1/(B*n)) * [A*ratio (if unclipped) - kl_coef*(1 - e^(ref-logp))]
    #  r0t0: -(1/4)*(1 - 0.04*(1-0.36787944)) = -(0.97471516)/4 = -0.2436788
    #  r0t1: clipped, k3 grad 0 -> 0 ; r0t2 padding -> 0
    #  r1t0: -(1/6)*(-0.5) = 0.0833333 ; r1t1 clipped -> 0
    #  r1t2: -(1/6)*(-0.5525855 - 0.04*(1-1.2214028)) = -(1/6)*(-0.5437294) = 0.0906216
    assert close(logp.grad, [[-0.2436788, 0.0, 0.0], [0.0833333, 0.0, 0.0906216]], atol=1e-6)


def test_grpo_loss_unclipped_gradient_no_kl():
    logp, old, ref, adv, mask = _example()
    loss, _ = grpo_loss(logp, old, ref, adv, mask, kl_coef=0.0)
    loss.backward()
    # -A*ratio/(n*B): r0t0 -1*1/(2*2) = -0.25 ; r1t0 0.5*1/(3*2) = 0.0833333
    #                 r1t2 0.5*1.1051709/6 = 0.0920976 ; clipped & padding: 0
    assert close(logp.grad, [[-0.25, 0.0, 0.0], [0.0833333, 0.0, 0.0920976]], atol=1e-6)


def test_grpo_loss_ratio_one():
    logp = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    ref = torch.tensor([[-2.0, -1.0], [-1.0, -1.0]])
    adv = torch.tensor([[2.0, 2.0], [-1.0, -1.0]])  # per-token form
    loss, met = grpo_loss(logp, logp.clone(), ref, adv, torch.ones(2, 2, dtype=torch.bool))
    # pg_loss = -mean(A) = -(2-1)/2 = -0.5 ; kl = (0.36787944/2 + 0)/2 = 0.0919699
    # loss = -0.5 + 0.04*0.0919699 = -0.4963212
    assert close(loss, -0.4963212, atol=1e-6)
    assert math.isclose(met["pg_loss"], -0.5, abs_tol=1e-6)
    assert math.isclose(met["kl"], 0.0919699, abs_tol=1e-6)
    assert met["clip_frac"] == 0.0 and met["ratio_mean"] == 1.0 and met["ratio_max"] == 1.0


def test_grpo_loss_empty_sequence_and_garbage_padding():
    nan, inf = float("nan"), float("inf")
    logp = torch.tensor([[-1.0, nan], [inf, -inf]], requires_grad=True)
    old = torch.tensor([[-1.0, -inf], [nan, 3.0]])
    ref = torch.tensor([[-1.0, inf], [-inf, nan]])
    mask = torch.tensor([[True, False], [False, False]])
    loss, met = grpo_loss(logp, old, ref, torch.tensor([0.5, 7.0]), mask)
    # row 0: ratio 1, A 0.5, k3 0 -> obj 0.5 ; row 1 empty -> 0 ; loss = -(0.5+0)/2
    assert close(loss, -0.25)
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    assert close(logp.grad, [[-0.25, 0.0], [0.0, 0.0]])  # -A*1/(1*2)
    assert not any(math.isnan(v) for v in met.values())

    # all-empty batch: loss exactly 0, metrics 0
    loss0, met0 = grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3),
                            torch.ones(2), torch.zeros(2, 3))
    assert loss0.item() == 0.0 and all(v == 0.0 for v in met0.values())


def test_grpo_loss_micro_batches_sum_to_full_batch():
    g = torch.Generator().manual_seed(1)
    B, T = 6, 5
    base = torch.randn(B, T, generator=g) * 0.3 - 1.0
    old = base + torch.randn(B, T, generator=g) * 0.3  # some tokens clipped
    ref = base + torch.randn(B, T, generator=g) * 0.3
    adv = torch.randn(B, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0] = False  # include an empty sequence

    full_lp = base.clone().requires_grad_(True)
    full_loss, full_met = grpo_loss(full_lp, old, ref, adv, mask)
    full_loss.backward()

    micro_lp = base.clone().requires_grad_(True)
    total = torch.zeros(())
    kl_total = 0.0
    for sl in (slice(0, 2), slice(2, 3), slice(3, 6)):
        l, m = grpo_loss(micro_lp[sl], old[sl], ref[sl], adv[sl], mask[sl], num_sequences=B)
        l.backward()
        total = total + l.detach()
        kl_total += m["kl"]
    assert torch.allclose(total, full_loss.detach(), atol=1e-6)
    assert torch.allclose(micro_lp.grad, full_lp.grad, atol=1e-7)
    assert math.isclose(kl_total, full_met["kl"], abs_tol=1e-6)
    assert full_met["clip_frac"] > 0.0


def test_grpo_loss_num_sequences_scaling():
    logp, old, ref, adv, mask = _example()
    loss, _ = grpo_loss(logp, old, ref, adv, mask, num_sequences=4)
    # sum of per-sequence objectives is 0.6081619 (see hand example) -> -0.6081619/4
    assert close(loss, -0.1520405, atol=1e-6)


def test_grpo_loss_shape_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        grpo_loss(x, x, x, torch.zeros(3), x)
    with pytest.raises(ValueError):
        grpo_loss(x, torch.zeros(2, 4), x, torch.zeros(2), x)


def test_grpo_loss_positional_signature_unchanged():
    logp, old, ref, adv, mask = _example()
    # (logprobs, old, ref, advantages, mask, clip_eps, kl_coef, num_sequences) positionally;
    # the variant options are keyword-only and default to the paper's k3 / seq-mean-token-mean.
    loss, _ = grpo_loss(logp, old, ref, adv, mask, 0.2, 0.04, 4)
    assert close(loss, -0.1520405, atol=1e-6)  # same as test_grpo_loss_num_sequences_scaling
    with pytest.raises(TypeError):
        grpo_loss(logp, old, ref, adv, mask, 0.2, 0.04, 4, "k1")


def test_outcome_advantages_normalize_std_flag():
    r = torch.tensor([3.0, 0.0, 0.0])
    # default keeps the std: [2, -1, -1]/1.7320508 = [1.1547005, -0.5773503, -0.5773503]
    assert close(outcome_advantages(r, 3, eps=0.0), [1.1547005, -0.5773503, -0.5773503])
    assert close(outcome_advantages(r, 3, eps=0.0, normalize_std=True), [1.1547005, -0.5773503, -0.5773503])
    # off: only centred, mean 1 -> [2, -1, -1]
    assert close(outcome_advantages(r, 3, normalize_std=False), [2.0, -1.0, -1.0])
