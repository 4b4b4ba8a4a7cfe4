"""Pure GRPO math (Group Relative Policy Optimization, DeepSeekMath, Shao et al. 2024).

This module only depends on ``torch`` (and :mod:`learner.registry`, also pure torch,
whose names it re-exports: import everything from here). It implements the GRPO
objective of DeepSeekMath (eq. 3), for a question ``q`` with a group of ``G`` sampled
outputs ``o_1 .. o_G`` drawn from the old policy:

    J(theta) = 1/G * sum_i 1/|o_i| * sum_t {
                   min( r_it * A_it, clip(r_it, 1 - eps, 1 + eps) * A_it )
                   - beta * D_KL[pi_theta || pi_ref]_it }

    r_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)

The learner minimises ``-J`` (:func:`grpo_loss`).

Advantages
----------
Outcome supervision (:func:`outcome_advantages`), one reward ``R_i`` per output, the
same advantage for every token of the output::

    A_it = (R_i - mean(R)) / (std(R) + eps)        normalize_std=True (paper)
    A_it =  R_i - mean(R)                          normalize_std=False

with mean and Bessel-corrected std over the output's group. Process supervision
(:func:`process_advantages`, DeepSeekMath sec. 4.1.3): output ``i`` has steps
``j = 1..K_i`` with rewards ``R_ij`` whose last tokens are ``end_ij``; pooling the step
rewards of all outputs of the group::

    R~_ij = (R_ij - mean(R_group)) / (std(R_group) + eps)   (or without the std)
    A_it  = sum_{j : end_ij >= t} R~_ij                     (0 after the last step)

A group whose (pooled) rewards are all equal, or a group of one (outcome) / with fewer
than two step rewards (process), gets exactly zero advantages.

KL estimators (``KL_ESTIMATORS``; ``d = logp - ref = log(pi_theta / pi_ref)``)
-------------------------------------------------------------------------------
    "k1":  d                    "k2":  d^2 / 2
    "k3":  exp(-d) + d - 1 = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1   (paper)

Loss aggregations (``LOSS_AGGREGATIONS``; per-token ``x``, mask ``m``, ``n_i`` tokens)
--------------------------------------------------------------------------------------
    "seq-mean-token-mean":  sum_i (1/n_i) sum_t m_it x_it / S      (paper, default)
    "token-mean":           sum_i sum_t m_it x_it / K
    "seq-mean-token-sum":   sum_i sum_t m_it x_it / S

``S`` = number of sequences (``num_sequences``, default the batch size), ``K`` = number
of masked tokens (``num_tokens``, default this batch's count). Passing the optimiser
step's totals to every micro-batch makes the micro-batch losses sum to the full loss.

KL placement
------------
``kl_coef`` in :func:`grpo_loss` puts the KL in the loss (paper). Alternatively
:func:`kl_penalized_rewards` subtracts ``kl_coef * sum_t KL_t`` from each output's reward
before the advantages are computed; the loss then uses ``kl_coef=0``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from learner import registry
from learner.chunked_logprobs import chunked_token_logprobs
from learner.registry import (
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    Registry,
    aggregate_seq_mean_token_mean,
    aggregate_seq_mean_token_sum,
    aggregate_token_mean,
    k1_kl,
    k2_kl,
    k3_kl,
)

__all__ = [
    *registry.__all__,  # re-exported: this module is the public entry point for the GRPO math
    "NonFiniteError",
    "outcome_advantages",
    "process_advantages",
    "stack_response_advantages",
    "token_logprobs",
    "masked_mean",
    "grpo_loss",
    "kl_penalized_rewards",
    "check_finite",
]


class NonFiniteError(RuntimeError):
    """A tensor that must be finite holds NaN or +-inf (raised by :func:`check_finite`)."""


def _center_and_scale(values: torch.Tensor, count: int, eps: float, normalize_std: bool) -> torch.Tensor:
    """``(v - mean) / (std + eps)`` (or ``v - mean``) along the last dim of ``values``.

    ``count`` is the size of that dim. Rows that are constant, or ``count < 2``, give
    exact zeros. The Bessel std is computed by hand (no torch dof warnings).
    """
    mean = values.mean(dim=-1, keepdim=True)
    centered = values - mean
    if count < 2:
        return torch.zeros_like(values)
    if normalize_std:
        std = (centered.pow(2).sum(dim=-1, keepdim=True) / (count - 1)).sqrt()
        out = centered / (std + eps)
    else:
        out = centered
    constant = values.amax(dim=-1, keepdim=True) == values.amin(dim=-1, keepdim=True)
    return torch.where(constant, torch.zeros_like(out), out)


def outcome_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-6, normalize_std: bool = True
) -> torch.Tensor:
    """Group-normalised outcome advantages.

    Args:
        rewards: 1-D float tensor ``[N]``; groups are contiguous, i.e. rewards
            ``[k*group_size, (k+1)*group_size)`` belong to prompt ``k``.
        group_size: number of samples per prompt (``G``); must divide ``N``.
        eps: added to the group std for numerical stability.
        normalize_std: divide by the group std (paper); ``False`` only centres.

    Returns:
        ``[N]`` tensor ``(r - mean(group)) / (std(group) + eps)`` (or ``r - mean``)
        where ``std`` is the Bessel-corrected (unbiased) standard deviation. A group
        whose rewards are all equal (including every group when ``group_size == 1``)
        gets exactly zero advantages, without NaNs or warnings.

    Raises:
        ValueError: if ``rewards`` is not 1-D, ``group_size < 1`` or ``N`` is not
            divisible by ``group_size``.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    n = rewards.shape[0]
    if n % group_size != 0:
        raise ValueError(f"len(rewards)={n} is not divisible by group_size={group_size}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    grouped = rewards.reshape(-1, group_size)  # [num_groups, G]
    return _center_and_scale(grouped, group_size, eps, normalize_std).reshape(n)


def process_advantages(
    step_rewards: Sequence[torch.Tensor],
    step_ends: Sequence[torch.Tensor],
    lengths: Union[Sequence[int], torch.Tensor],
    group_size: int,
    eps: float = 1e-6,
    normalize_std: bool = True,
) -> list:
    """Per-token advantages from per-step rewards (process supervision).

    Args:
        step_rewards: one 1-D float tensor per output (groups contiguous, ``group_size``
            outputs each): the reward of each reasoning step of that output.
        step_ends: one 1-D integer tensor per output, same lengths as ``step_rewards``:
            the 0-based index, among the output's response tokens, of each step's last
            token; strictly increasing and ``< lengths[i]``.
        lengths: number of response tokens of each output.
        group_size: outputs per question.
        eps: added to the pooled std.
        normalize_std: divide by the pooled std; ``False`` only centres.

    Every step reward is normalised with the mean and (Bessel) std of *all* step
    rewards of its group, pooled over the group's outputs (a group whose pooled rewards
    are all equal, or that has fewer than 2 of them, gets zeros). Token ``t`` of output
    ``i`` then gets the sum of the normalised rewards of the steps of ``i`` that end at
    or after ``t``; tokens after the last step end get 0.

    Returns:
        A list of ``[lengths[i]]`` float tensors (no grad).

    Raises:
        ValueError: on mismatched list lengths, a bad ``group_size``, or, naming the
            output index, a step count mismatch, non-increasing / negative step ends or
            a step end ``>= lengths[i]``.
    """
    n = len(step_rewards)
    if len(step_ends) != n or len(lengths) != n:
        raise ValueError(
            f"got {n} step_rewards, {len(step_ends)} step_ends and {len(lengths)} lengths; "
            f"need one of each per output"
        )
    if group_size < 1 or n % group_size != 0:
        raise ValueError(f"{n} outputs are not a whole number of groups of group_size={group_size}")
    rewards, ends, lens = [], [], []
    for i in range(n):
        r = torch.as_tensor(step_rewards[i]).detach().reshape(-1)
        r = r if r.is_floating_point() else r.float()
        e = torch.as_tensor(step_ends[i]).detach().reshape(-1).long()
        length = int(lengths[i])
        if r.numel() != e.numel():
            raise ValueError(f"output {i}: {r.numel()} step rewards but {e.numel()} step ends")
        if length < 0:
            raise ValueError(f"output {i}: negative length {length}")
        if e.numel() and bool((e[1:] <= e[:-1]).any()):
            raise ValueError(f"output {i}: step ends {e.tolist()} are not strictly increasing")
        if e.numel() and (int(e[0]) < 0 or int(e[-1]) >= length):
            raise ValueError(f"output {i}: step ends {e.tolist()} out of range for length {length}")
        rewards.append(r)
        ends.append(e)
        lens.append(length)

    out = []
    for g in range(0, n, group_size):
        pooled = torch.cat(rewards[g:g + group_size])
        normed = _center_and_scale(pooled, pooled.numel(), eps, normalize_std)
        offset = 0
        for i in range(g, g + group_size):
            k = rewards[i].numel()
            mine = normed[offset:offset + k]
            offset += k
            # suffix[j] = sum of normalised rewards of steps j..K-1; suffix[K] = 0.
            suffix = torch.cat([mine.flip(0).cumsum(0).flip(0), mine.new_zeros(1)])
            # first step whose end is >= t (K when none is: after the last step).
            first = torch.searchsorted(ends[i], torch.arange(lens[i]), right=False)
            out.append(suffix[first])
    return out


def stack_response_advantages(advs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Right-pad per-output token advantages with 0 into ``[B, max_len]``."""
    if len(advs) == 0:
        return torch.zeros(0, 0)
    width = max(int(a.numel()) for a in advs)
    dtype = torch.promote_types(advs[0].dtype, torch.float32) if advs[0].is_floating_point() else torch.float32
    out = torch.zeros(len(advs), width, dtype=dtype)
    for i, a in enumerate(advs):
        out[i, : a.numel()] = a.reshape(-1)
    return out


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities of ``targets`` under ``softmax(logits / temperature)``.

    Args:
        logits: ``[B, T, V]`` (any float dtype; bf16/fp16 are upcast to fp32
            a chunk of positions at a time).
        targets: ``[B, T]`` integer token ids.
        temperature: sampling temperature (> 0) the tokens were drawn with.

    Returns:
        ``[B, T]`` float tensor (fp32, or fp64 for fp64 logits), differentiable
        w.r.t. ``logits``. Computed as ``gather(logits) - logsumexp(logits)``
        a chunk of positions at a time with its own backward
        (``learner.chunked_logprobs``): no fp32 copy of the logits is kept for
        backward, and at most one fp32 chunk exists at a time.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:2]:
        raise ValueError(f"targets shape {tuple(targets.shape)} != logits[:2] {tuple(logits.shape[:2])}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return chunked_token_logprobs(logits, targets, temperature)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is true/non-zero.

    ``mask`` (bool or float 0/1) must broadcast to ``x``. With ``dim=None`` a
    scalar over all masked entries; otherwise reduces along ``dim``. Masked-out
    entries are excluded with ``torch.where`` (so inf/NaN there do not leak);
    an empty selection gives 0 instead of NaN.
    """
    keep = mask.bool() if mask.dtype != torch.bool else mask
    keep = keep.expand_as(x) if keep.shape != x.shape else keep
    zeros = torch.zeros_like(x)
    total = torch.where(keep, x, zeros)
    count = keep.to(x.dtype)
    if dim is None:
        return total.sum() / count.sum().clamp(min=1.0)
    return total.sum(dim=dim) / count.sum(dim=dim).clamp(min=1.0)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    kl_coef: float = 0.04,
    num_sequences: Optional[int] = None,
    *,
    kl_estimator: str = "k3",
    loss_agg: str = "seq-mean-token-mean",
    num_tokens: Optional[float] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Negative GRPO objective (see module docstring).

    Args:
        logprobs: ``[B, T]`` current-policy token log-probs (requires grad).
        old_logprobs: ``[B, T]`` log-probs of the sampling policy (no grad used).
        ref_logprobs: ``[B, T]`` log-probs of the frozen reference policy.
        advantages: ``[B, T]`` (per token, e.g. process supervision) or ``[B]``
            (broadcast over tokens).
        mask: ``[B, T]``, bool or float; 1 for response tokens. Values of the
            other inputs at masked-out positions are ignored (may be inf/NaN).
        clip_eps: PPO clip range ``eps``; ratio clipped to ``[1-eps, 1+eps]``.
        kl_coef: ``beta``, weight of the KL penalty (0 when the KL is placed in the
            reward instead, see :func:`kl_penalized_rewards`).
        num_sequences: ``S`` of the aggregation. ``None`` means ``B``. Pass the
            number of sequences in the *whole* optimiser step when splitting it into
            micro-batches (and ``num_tokens``, its masked-token count, for
            ``"token-mean"``): then summing the returned losses (and accumulating
            gradients) over the micro-batches gives exactly the full-batch loss and
            gradient.
        kl_estimator: a ``KL_ESTIMATORS`` name: ``"k1"``, ``"k2"`` or ``"k3"`` (paper).
        loss_agg: a ``LOSS_AGGREGATIONS`` name: ``"seq-mean-token-mean"`` (paper),
            ``"token-mean"`` or ``"seq-mean-token-sum"``.
        num_tokens: ``K`` of ``"token-mean"``; ``None`` means this batch's count.

    Per token, ``obj_it = min(r*A, clip(r)*A) - kl_coef * KL_it``, and
    ``loss = -agg(obj)``. With the defaults, per sequence ``i`` with ``n_i`` masked
    tokens::

        obj_i = 1/n_i * sum_t [ min(r*A, clip(r)*A) - kl_coef * k3 ]
        loss  = -sum_i obj_i / num_sequences

    Sequences with ``n_i == 0`` contribute exactly 0.

    Returns:
        ``(loss, metrics)``; ``loss`` is a scalar tensor. ``metrics`` holds
        Python floats: ``loss``; ``pg_loss`` (``-agg(pg)``) and ``kl``
        (``agg(KL)`` with the chosen estimator), so ``loss = pg_loss + kl_coef * kl``
        and, like the loss, they sum over micro-batches when the totals are given;
        token-level statistics over this batch's masked tokens:
        ``clip_frac`` (fraction where clipping was active: ratio outside
        ``[1-eps, 1+eps]`` *and* the clipped term strictly smaller than the
        unclipped one, i.e. the min selected the clipped term and the token
        gets no policy gradient), ``ratio_mean``, ``ratio_max``, ``adv_mean``
        (mean advantage over masked tokens). All are 0.0 with no masked tokens.

    Raises:
        ValueError: on shape mismatches, non-positive totals or unknown names.
    """
    estimate_kl = KL_ESTIMATORS.get(kl_estimator)
    aggregate = LOSS_AGGREGATIONS.get(loss_agg)
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    shape = logprobs.shape
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs), ("mask", mask)):
        if t.shape != shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != logprobs shape {tuple(shape)}")
    if advantages.dim() == 1:
        if advantages.shape[0] != shape[0]:
            raise ValueError(f"advantages shape {tuple(advantages.shape)} does not match batch {shape[0]}")
        advantages = advantages.unsqueeze(-1)
    elif advantages.shape != shape:
        raise ValueError(f"advantages shape {tuple(advantages.shape)} != logprobs shape {tuple(shape)}")
    if num_sequences is not None and int(num_sequences) <= 0:
        raise ValueError(f"num_sequences must be positive, got {num_sequences}")
    if num_tokens is not None and not float(num_tokens) > 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")

    keep = mask if mask.dtype == torch.bool else mask != 0
    dtype = logprobs.dtype
    zeros = torch.zeros(shape, dtype=dtype, device=logprobs.device)
    # Neutralise padding before any exp() so that garbage there (inf/NaN) can
    # affect neither the value nor the gradient.
    logp = torch.where(keep, logprobs, zeros)
    old = torch.where(keep, old_logprobs.detach().to(dtype), zeros)
    ref = torch.where(keep, ref_logprobs.detach().to(dtype), zeros)
    adv = torch.where(keep, advantages.detach().to(dtype).expand(shape), zeros)

    ratio = torch.exp(logp - old)
    clipped_ratio = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    surr_unclipped = ratio * adv
    surr_clipped = clipped_ratio * adv
    pg = torch.minimum(surr_unclipped, surr_clipped)
    kl = estimate_kl(logp, ref)

    loss = -aggregate(pg - kl_coef * kl, keep, num_sequences, num_tokens)

    with torch.no_grad():
        outside = (ratio < 1.0 - clip_eps) | (ratio > 1.0 + clip_eps)
        clipped = outside & (surr_clipped < surr_unclipped) & keep
        n_total = int(keep.sum().item())
        if n_total > 0:
            ratio_max = float(ratio[keep].max().item())
        else:
            ratio_max = 0.0
        metrics = {
            "loss": float(loss.detach().item()),
            "pg_loss": float((-aggregate(pg, keep, num_sequences, num_tokens)).item()),
            "kl": float(aggregate(kl, keep, num_sequences, num_tokens).item()),
            "clip_frac": float(clipped.sum().item()) / n_total if n_total else 0.0,
            "ratio_mean": float(masked_mean(ratio, keep).item()),
            "ratio_max": ratio_max,
            "adv_mean": float(masked_mean(adv, keep).item()),
        }
    return loss, metrics


def kl_penalized_rewards(
    rewards: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> torch.Tensor:
    """Outcome rewards with the KL to the reference policy subtracted ("KL in the reward").

    ``R'_i = R_i - kl_coef * sum_t m_it * KL_it`` with ``KL`` the chosen
    ``KL_ESTIMATORS`` estimator (``"k1"``: ``sum_t log(pi/pi_ref)``, the sequence-level
    log-ratio, as in PPO-style RLHF). Computed without gradient; masked-out positions are
    ignored (may be inf/NaN). When the KL is placed in the reward, compute the
    advantages from ``R'`` and call :func:`grpo_loss` with ``kl_coef=0`` so the KL is
    not counted twice.

    Args:
        rewards: ``[B]``. logprobs, ref_logprobs, mask: ``[B, T]`` (sampling-policy and
            reference log-probs of the response tokens; 1 in ``mask`` for response
            tokens).

    Returns:
        ``[B]`` float tensor.
    """
    estimate_kl = KL_ESTIMATORS.get(estimator)
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    for name, t in (("ref_logprobs", ref_logprobs), ("mask", mask)):
        if t.shape != logprobs.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != logprobs shape {tuple(logprobs.shape)}")
    if rewards.shape != logprobs.shape[:1]:
        raise ValueError(f"rewards shape {tuple(rewards.shape)} does not match batch {logprobs.shape[0]}")
    with torch.no_grad():
        keep = mask if mask.dtype == torch.bool else mask != 0
        dtype = torch.promote_types(logprobs.dtype, torch.float32)
        zeros = torch.zeros(logprobs.shape, dtype=dtype, device=logprobs.device)
        logp = torch.where(keep, logprobs.detach().to(dtype), zeros)
        ref = torch.where(keep, ref_logprobs.detach().to(dtype), zeros)
        kl_seq = torch.where(keep, estimate_kl(logp, ref), zeros).sum(dim=-1)
        base = rewards.detach().to(dtype) if not rewards.is_floating_point() else rewards.detach()
        return base - kl_coef * kl_seq.to(base.dtype)


def check_finite(name: str, tensor: torch.Tensor, context: str) -> torch.Tensor:
    """Raise :class:`NonFiniteError` if ``tensor`` holds NaN or +-inf; else return it.

    The message names the tensor, the caller's ``context`` (e.g. ``"step 3, batch of
    64 sequences"``), how many values are bad out of how many, and the first bad
    index (row-major) with its value, e.g.::

        non-finite loss (step 3, batch of 64 sequences): 2 of 6 values are NaN/inf;
        first at index (1, 0) = nan
    """
    t = torch.as_tensor(tensor).detach()
    if not (t.is_floating_point() or t.is_complex()):
        return tensor
    bad = ~torch.isfinite(t)
    count = int(bad.sum().item())
    if count == 0:
        return tensor
    first = tuple(int(i) for i in bad.nonzero()[0].tolist())
    value = t[first].item()
    raise NonFiniteError(
        f"non-finite {name} ({context}): {count} of {t.numel()} values are NaN/inf; "
        f"first at index {first} = {value}"
    )
