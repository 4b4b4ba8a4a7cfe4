"""Tests for the GRPO variants of learner.algorithm: registries, KL estimators, loss
aggregations, process supervision, KL-in-reward and the finiteness guard.

Expected numbers are literals worked out by hand (arithmetic in comments); the tests
never re-implement the formulas they check.
"""

import math
import warnings

import pytest
import torch

from learner.algorithm import (
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    NonFiniteError,
    Registry,
    check_finite,
    grpo_loss,
    kl_penalized_rewards,
    outcome_advantages,
    process_advantages,
    stack_response_advantages,
)

# Constants (calculator): e^-1 = 0.36787944, e^0.2 = 1.22140276, e^-0.5 = 0.60653066,
# e^0.1 = 1.10517092, sqrt(1/3) = 0.57735027, 0.5/(0.57735027+1e-6) = 0.8660239


def close(t, expected, atol=1e-6):
    return torch.allclose(torch.as_tensor(t, dtype=torch.float64),
                          torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


# ------------------------------------------------------------------- registry

def test_registry_register_get_names_and_errors():
    reg = Registry("widget")
    assert reg.names() == []

    @reg.register("double")
    def double(x):
        return 2 * x

    assert reg.get("double") is double and reg.get("double")(3) == 6
    assert reg.names() == ["double"] and "double" in reg and len(reg) == 1
    with pytest.raises(ValueError, match="already registered"):
        reg.register("double")(lambda x: x)
    with pytest.raises(ValueError, match=r"unknown widget 'triple'; known: 'double'"):
        reg.get("triple")


def test_builtin_registries_list_known_names_on_error():
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
    assert LOSS_AGGREGATIONS.names() == ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"]
    with pytest.raises(ValueError, match=r"unknown KL estimator 'k4'; known: 'k1', 'k2', 'k3'"):
        KL_ESTIMATORS.get("k4")
    with pytest.raises(ValueError) as err:
        LOSS_AGGREGATIONS.get("mean")
    for name in ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum"):
        assert name in str(err.value)
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="known: 'k1', 'k2', 'k3'"):
        grpo_loss(x, x, x, torch.zeros(1), torch.ones(1, 2), kl_estimator="kl")
    with pytest.raises(ValueError, match="token-mean"):
        grpo_loss(x, x, x, torch.zeros(1), torch.ones(1, 2), loss_agg="sum")


# ------------------------------------------------------------- KL estimators

def test_kl_estimators_hand_values():
    logp = torch.tensor([[-1.0, -1.5, -0.4]])
    ref = torch.tensor([[-2.0, -1.5, -0.2]])
    # d = logp - ref = [1.0, 0.0, -0.2]
    # k1 = d                        = [1.0, 0.0, -0.2]
    # k2 = d^2/2                    = [0.5, 0.0, 0.02]
    # k3 = e^-d + d - 1: d=1: 0.36787944 + 1 - 1 = 0.36787944 ; d=0: 0 ;
    #                    d=-0.2: 1.22140276 - 0.2 - 1 = 0.02140276
    assert close(KL_ESTIMATORS.get("k1")(logp, ref), [[1.0, 0.0, -0.2]])
    assert close(KL_ESTIMATORS.get("k2")(logp, ref), [[0.5, 0.0, 0.02]])
    assert close(KL_ESTIMATORS.get("k3")(logp, ref), [[0.36787944, 0.0, 0.02140276]])


# ----------------------------------------------------------- aggregations

def _padded():
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, 5.0], [nan, 7.0, inf]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])  # row 2 empty
    return x, mask


def test_aggregations_hand_values_on_padded_batch():
    x, mask = _padded()
    agg = LOSS_AGGREGATIONS.get
    # seq-mean-token-mean: row means (1+2)/2 = 1.5, (3+4+5)/3 = 4, empty 0 -> 5.5 / 3
    assert close(agg("seq-mean-token-mean")(x, mask, None, None), 1.8333333)
    assert close(agg("seq-mean-token-mean")(x, mask, 5, None), 1.1)  # 5.5 / 5
    # token-mean: (1+2+3+4+5) / 5 masked tokens = 15/5 ; with num_tokens=10: 15/10
    assert close(agg("token-mean")(x, mask, None, None), 3.0)
    assert close(agg("token-mean")(x, mask, None, 10.0), 1.5)
    # seq-mean-token-sum: row sums 3 + 12 + 0 = 15, / 3 rows ; / num_sequences=5 -> 3
    assert close(agg("seq-mean-token-sum")(x, mask.bool(), None, None), 5.0)
    assert close(agg("seq-mean-token-sum")(x, mask, 5, None), 3.0)
    # empty selection -> exactly 0 (no NaN) for every aggregation
    for name in LOSS_AGGREGATIONS.names():
        assert agg(name)(x, torch.zeros(3, 3), None, None).item() == 0.0
    with pytest.raises(ValueError):
        agg("token-mean")(x, mask, None, 0.0)
    with pytest.raises(ValueError):
        agg("seq-mean-token-mean")(x, mask, 0, None)


@pytest.mark.parametrize("name", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"])
def test_aggregation_micro_batches_sum_to_full_batch(name):
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(7, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(7, 5, generator=g) > 0.4
    mask[1] = False
    fn = LOSS_AGGREGATIONS.get(name)
    full_x = x0.clone().requires_grad_(True)
    full = fn(full_x, mask, None, None)
    full.backward()
    micro_x = x0.clone().requires_grad_(True)
    total = 0.0
    n_tok = float(mask.sum())
    for sl in (slice(0, 1), slice(1, 3), slice(3, 7)):  # 1, 2 and 4 rows
        part = fn(micro_x[sl], mask[sl], 7, n_tok)
        part.backward()
        total += part.item()
    assert math.isclose(total, full.item(), rel_tol=0, abs_tol=1e-12)
    assert torch.allclose(micro_x.grad, full_x.grad, atol=1e-12, rtol=0)


# ------------------------------------------------------ grpo_loss variants

from tests.learner.test_algorithm import _example  # noqa: E402 - the same hand-worked batch
# Surrogates (see test_algorithm.py): row 0: pg = [1 (ratio 1), 1.2 (clipped)];
# row 1: pg = [-0.5 (ratio 1), -0.4 (clipped), -0.5525855 (ratio e^0.1 = 1.1051709)].
# pg sum = 1 + 1.2 - 0.5 - 0.4 - 0.5525855 = 0.7474145 ; d = logp - ref:
# row 0 [1, 0], row 1 [0, 0, -0.2].


def test_grpo_loss_token_mean_k1_hand_example():
    logp, old, ref, adv, mask = _example()
    loss, met = grpo_loss(logp, old, ref, adv, mask, kl_estimator="k1", loss_agg="token-mean")
    # K = 5 tokens. pg_loss = -0.7474145/5 = -0.1494829
    # k1 = d: sum 1 + 0 + 0 + 0 - 0.2 = 0.8 ; kl = 0.8/5 = 0.16
    # loss = -0.1494829 + 0.04*0.16 = -0.1430829
    assert close(loss, -0.1430829)
    assert math.isclose(met["pg_loss"], -0.1494829, abs_tol=1e-6)
    assert math.isclose(met["kl"], 0.16, abs_tol=1e-6)
    assert math.isclose(met["clip_frac"], 0.4, abs_tol=1e-9)  # unchanged surrogate
    loss.backward()
    # d loss/d logp = -(1/K) * [A*ratio (unclipped only) - 0.04 * d k1/d logp (= 1)]
    #  r0t0: -(1 - 0.04)/5 = -0.192 ; r0t1 clipped: -(0 - 0.04)/5 = 0.008 ; pad 0
    #  r1t0: -(-0.5 - 0.04)/5 = 0.108 ; r1t1 clipped: 0.008
    #  r1t2: -(-0.5525855 - 0.04)/5 = 0.5925855/5 = 0.1185171
    assert close(logp.grad, [[-0.192, 0.008, 0.0], [0.108, 0.008, 0.1185171]])


def test_grpo_loss_seq_mean_token_sum_k2_hand_example():
    logp, old, ref, adv, mask = _example()
    loss, met = grpo_loss(logp, old, ref, adv, mask, kl_estimator="k2", loss_agg="seq-mean-token-sum")
    # S = 2. pg_loss = -0.7474145/2 = -0.3737073
    # k2 = d^2/2: row 0 [0.5, 0], row 1 [0, 0, 0.02] -> kl = (0.5 + 0.02)/2 = 0.26
    # loss = -0.3737073 + 0.04*0.26 = -0.3737073 + 0.0104 = -0.3633073
    assert close(loss, -0.3633073)
    assert math.isclose(met["pg_loss"], -0.3737073, abs_tol=1e-6)
    assert math.isclose(met["kl"], 0.26, abs_tol=1e-6)
    loss.backward()
    # d loss/d logp = -(1/S) * [A*ratio (unclipped only) - 0.04 * d]   (d k2/d logp = d)
    #  r0t0: -(1 - 0.04*1)/2 = -0.48 ; r0t1 clipped, d=0: 0
    #  r1t0: -(-0.5)/2 = 0.25 ; r1t1 clipped, d=0: 0
    #  r1t2: -(-0.5525855 - 0.04*(-0.2))/2 = 0.5445855/2 = 0.2722928
    assert close(logp.grad, [[-0.48, 0.0, 0.0], [0.25, 0.0, 0.2722928]])


def test_grpo_loss_defaults_are_paper_variant():
    logp, old, ref, adv, mask = _example()
    explicit, m1 = grpo_loss(logp, old, ref, adv, mask, kl_estimator="k3", loss_agg="seq-mean-token-mean")
    assert close(explicit, -0.3040809)  # hand value of test_algorithm.py
    assert math.isclose(m1["kl"], 0.0955370, abs_tol=1e-6)


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_grpo_loss_micro_batches_sum_to_full_batch_every_variant(agg, est):
    g = torch.Generator().manual_seed(7)
    B, T = 7, 6
    base = torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3 - 1.0
    old = base + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3
    ref = base + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)  # per-token advantages
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[2] = False
    full_lp = base.clone().requires_grad_(True)
    full, full_met = grpo_loss(full_lp, old, ref, adv, mask, kl_estimator=est, loss_agg=agg)
    full.backward()
    micro_lp = base.clone().requires_grad_(True)
    total, kl_total, pg_total = 0.0, 0.0, 0.0
    n_tok = float(mask.sum())
    for sl in (slice(0, 1), slice(1, 3), slice(3, 7)):  # 1, 2 and 4 rows
        part, met = grpo_loss(micro_lp[sl], old[sl], ref[sl], adv[sl], mask[sl], kl_estimator=est,
                              loss_agg=agg, num_sequences=B, num_tokens=n_tok)
        part.backward()
        total += part.item()
        kl_total += met["kl"]
        pg_total += met["pg_loss"]
    assert math.isclose(total, full.item(), abs_tol=1e-12)
    assert torch.allclose(micro_lp.grad, full_lp.grad, atol=1e-12, rtol=0)
    assert math.isclose(kl_total, full_met["kl"], abs_tol=1e-12)
    assert math.isclose(pg_total, full_met["pg_loss"], abs_tol=1e-12)


def test_grpo_loss_rejects_bad_totals():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError):
        grpo_loss(x, x, x, torch.zeros(1), torch.ones(1, 2), loss_agg="token-mean", num_tokens=0)
    with pytest.raises(ValueError):
        grpo_loss(x, x, x, torch.zeros(1), torch.ones(1, 2), num_sequences=0)


# ------------------------------------------------------- outcome, std off

def test_outcome_advantages_without_std():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    # group 1: mean 0.5 -> [0.5, -0.5, -0.5, 0.5] ; group 2 all equal -> exact 0
    adv = outcome_advantages(r, group_size=4, normalize_std=False)
    assert close(adv, [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    assert torch.equal(adv[4:], torch.zeros(4))
    # [3, 0, 0]: mean 1 -> [2, -1, -1] (std 1.7320508 is not used)
    assert close(outcome_advantages(torch.tensor([3.0, 0.0, 0.0]), 3, normalize_std=False), [2.0, -1.0, -1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = outcome_advantages(torch.tensor([0.1, 0.1, 0.1, 0.7]), 1, normalize_std=False)
        b = outcome_advantages(torch.tensor([0.1, 0.1, 0.1]), 3, normalize_std=False)
    assert torch.equal(a, torch.zeros(4)) and torch.equal(b, torch.zeros(3))


# -------------------------------------------------------- process supervision

def _worked_example():
    # group of 2: output 0 has 3 steps (rewards [1, 0, 1], last tokens 1, 3, 5; 6 tokens),
    # output 1 has 1 step (reward [0], last token 2; 4 tokens).
    rewards = [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0])]
    ends = [torch.tensor([1, 3, 5]), torch.tensor([2])]
    return rewards, ends, [6, 4]


def test_process_advantages_worked_example_uneven_steps():
    rewards, ends, lengths = _worked_example()
    adv = process_advantages(rewards, ends, lengths, group_size=2)
    # pooled [1, 0, 1, 0]: mean 0.5, var = 4*0.25/3 = 1/3, std 0.57735027
    # normalised: +-0.5/(0.57735027 + 1e-6) = +-0.8660239 -> [0.866, -0.866, 0.866 | -0.866]
    # output 0: t0..1 (steps ending at 1, 3, 5): 0.866 - 0.866 + 0.866 = 0.8660239
    #           t2..3 (steps ending at 3, 5):   -0.866 + 0.866       = 0
    #           t4..5 (step ending at 5):        0.8660239
    # output 1: t0..2: -0.8660239 ; t3 after the last step: 0
    assert [a.shape for a in adv] == [(6,), (4,)]
    assert close(adv[0], [0.8660239, 0.8660239, 0.0, 0.0, 0.8660239, 0.8660239], atol=1e-5)
    assert close(adv[1], [-0.8660239, -0.8660239, -0.8660239, 0.0], atol=1e-5)
    assert adv[1][3].item() == 0.0
    stacked = stack_response_advantages(adv)
    assert stacked.shape == (2, 6)
    assert close(stacked, [[0.8660239, 0.8660239, 0, 0, 0.8660239, 0.8660239],
                           [-0.8660239, -0.8660239, -0.8660239, 0, 0, 0]], atol=1e-5)


def test_process_advantages_without_std():
    rewards, ends, lengths = _worked_example()
    adv = process_advantages(rewards, ends, lengths, group_size=2, normalize_std=False)
    # centred [0.5, -0.5, 0.5 | -0.5]: output 0: 0.5-0.5+0.5 = 0.5, then -0.5+0.5 = 0, then 0.5
    assert close(adv[0], [0.5, 0.5, 0.0, 0.0, 0.5, 0.5])
    assert close(adv[1], [-0.5, -0.5, -0.5, 0.0])


def test_process_advantages_degenerate_groups_are_zero_without_warnings():
    rewards = [torch.tensor([0.3, 0.3]), torch.tensor([0.3]),   # group 0: all equal
               torch.tensor([1.0]), torch.tensor([])]           # group 1: one step reward
    ends = [torch.tensor([0, 2]), torch.tensor([1]), torch.tensor([3]), torch.tensor([], dtype=torch.long)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adv = process_advantages(rewards, ends, [3, 2, 5, 0], group_size=2)
    assert [a.shape for a in adv] == [(3,), (2,), (5,), (0,)]
    for a in adv:
        assert torch.equal(a, torch.zeros(a.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        single = process_advantages([torch.tensor([1.0, 0.0])], [torch.tensor([0, 1])], [2], group_size=1)
    # group of one output with two steps: pooled [1, 0], mean 0.5, std sqrt(0.5) = 0.70710678
    # normalised [0.7071058, -0.7071058]; t0: 0.707 - 0.707 = 0, t1: -0.7071058
    assert close(single[0], [0.0, -0.7071058], atol=1e-5)


def test_process_advantages_validation_names_the_output():
    rewards, ends, lengths = _worked_example()
    with pytest.raises(ValueError, match="output 1: 2 step rewards but 1 step ends"):
        process_advantages([rewards[0], torch.tensor([0.0, 1.0])], ends, lengths, 2)
    with pytest.raises(ValueError, match="output 0: .*not strictly increasing"):
        process_advantages(rewards, [torch.tensor([1, 1, 5]), ends[1]], lengths, 2)
    with pytest.raises(ValueError, match="output 1: .*out of range for length 2"):
        process_advantages(rewards, ends, [6, 2], 2)
    with pytest.raises(ValueError, match="output 0"):
        process_advantages(rewards, [torch.tensor([-1, 3, 5]), ends[1]], lengths, 2)
    with pytest.raises(ValueError):
        process_advantages(rewards, ends[:1], lengths, 2)
    with pytest.raises(ValueError):
        process_advantages(rewards, ends, lengths, 3)


def test_process_advantages_feed_grpo_loss():
    rewards, ends, lengths = _worked_example()
    adv = stack_response_advantages(process_advantages(rewards, ends, lengths, group_size=2))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    lp = torch.full((2, 6), -1.0)
    loss, met = grpo_loss(lp, lp, lp, adv, mask, kl_coef=0.0)
    # ratio 1 everywhere: loss = -(mean_t A_0 + mean_t A_1)/2
    #  = -(4*0.8660239/6 - 3*0.8660239/4)/2 = -(0.5773493 - 0.6495179)/2 = 0.0360843
    assert close(loss, 0.0360843, atol=1e-6)
    # adv_mean over the 10 masked tokens: (4*0.866 - 3*0.866)/10 = 0.0866024
    assert math.isclose(met["adv_mean"], 0.0866024, abs_tol=1e-6)


# ------------------------------------------------------- KL in the reward

def test_kl_penalized_rewards_hand_values():
    rewards = torch.tensor([1.0, 0.0])
    logp = torch.tensor([[-1.0, -2.0], [-1.0, 0.0]])
    ref = torch.tensor([[-2.0, -2.0], [-1.5, float("nan")]])  # nan is padding
    mask = torch.tensor([[1, 1], [1, 0]])
    # d = logp - ref: row 0 [1, 0], row 1 [0.5, (pad)]
    # k1: row 0 1 + 0 = 1 -> 1 - 0.1*1 = 0.9 ; row 1 0.5 -> 0 - 0.1*0.5 = -0.05
    assert close(kl_penalized_rewards(rewards, logp, ref, mask, 0.1), [0.9, -0.05])
    # k3: row 0 e^-1 + 1 - 1 = 0.36787944 -> 1 - 0.036787944 = 0.96321206
    #     row 1 e^-0.5 + 0.5 - 1 = 0.10653066 -> -0.010653066
    assert close(kl_penalized_rewards(rewards, logp, ref, mask, 0.1, estimator="k3"),
                 [0.96321206, -0.01065307])
    # k2: row 0 0.5 -> 1 - 0.05 = 0.95 ; row 1 0.125 -> -0.0125
    assert close(kl_penalized_rewards(rewards, logp, ref, mask, 0.1, estimator="k2"), [0.95, -0.0125])
    assert close(kl_penalized_rewards(rewards, logp, ref, mask, 0.0), [1.0, 0.0])
    with pytest.raises(ValueError, match="known"):
        kl_penalized_rewards(rewards, logp, ref, mask, 0.1, estimator="k5")
    with pytest.raises(ValueError):
        kl_penalized_rewards(torch.zeros(3), logp, ref, mask, 0.1)


def test_kl_penalized_rewards_no_grad():
    logp = torch.tensor([[-1.0]], requires_grad=True)
    out = kl_penalized_rewards(torch.tensor([1.0]), logp, torch.tensor([[-1.5]]), torch.ones(1, 1), 1.0)
    assert not out.requires_grad
    assert close(out, [0.5])  # 1 - (-1 - -1.5)


# ------------------------------------------------------------- check_finite

def test_check_finite_passes_and_messages():
    ok = torch.tensor([1.0, 2.0])
    assert check_finite("loss", ok, "step 0") is ok
    assert check_finite("ids", torch.tensor([1, 2]), "step 0") is not None
    bad = torch.tensor([[1.0, 2.0, 3.0], [float("nan"), 1.0, float("inf")]])
    with pytest.raises(NonFiniteError) as err:
        check_finite("logprobs", bad, "step 3, batch of 64 sequences")
    msg = str(err.value)
    assert msg == ("non-finite logprobs (step 3, batch of 64 sequences): 2 of 6 values are NaN/inf; "
                   "first at index (1, 0) = nan")
    assert isinstance(err.value, RuntimeError)
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(step 7\): 1 of 1 values .* index \(\) = -inf"):
        check_finite("loss", torch.tensor(float("-inf")), "step 7")
