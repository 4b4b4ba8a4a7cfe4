"""Pure GRPO math (Group Relative Policy Optimization, DeepSeekMath, Shao et al. 2024).

This module only depends on ``torch``. It implements the outcome-supervised
GRPO objective of DeepSeekMath (eq. 3), for a question ``q`` with a group of
``G`` sampled outputs ``o_1 .. o_G`` drawn from the old policy:

    J(theta) = 1/G * sum_i 1/|o_i| * sum_t {
                   min( r_it * A_it, clip(r_it, 1 - eps, 1 + eps) * A_it )
                   - beta * D_KL[pi_theta || pi_ref]_it }

    r_it      = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)
    A_it      = (R_i - mean(R)) / std(R)                (outcome supervision,
                                                         same for every token)
    D_KL_it   = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1       ("k3", >= 0)

The learner minimises ``-J``. Sequences are averaged over their own response
tokens first and then over sequences (the DeepSeekMath "sequence-mean"
aggregation), which is what :func:`grpo_loss` computes.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

__all__ = [
    "outcome_advantages",
    "k3_kl",
    "token_logprobs",
    "masked_mean",
    "grpo_loss",
]


def outcome_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Group-normalised outcome advantages.

    Args:
        rewards: 1-D float tensor ``[N]``; groups are contiguous, i.e. rewards
            ``[k*group_size, (k+1)*group_size)`` belong to prompt ``k``.
        group_size: number of samples per prompt (``G``); must divide ``N``.
        eps: added to the group std for numerical stability.

    Returns:
        ``[N]`` tensor ``(r - mean(group)) / (std(group) + eps)`` where ``std`` is
        the Bessel-corrected (unbiased) standard deviation. A group whose rewards
        are all equal (including every group when ``group_size == 1``) gets
        exactly zero advantages, without NaNs or warnings.

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
    mean = grouped.mean(dim=1, keepdim=True)
    centered = grouped - mean
    if group_size > 1:
        # Manual unbiased std: avoids torch's degrees-of-freedom warning paths.
        std = (centered.pow(2).sum(dim=1, keepdim=True) / (group_size - 1)).sqrt()
    else:
        std = torch.zeros_like(mean)
    adv = centered / (std + eps)
    constant = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)
    adv = torch.where(constant, torch.zeros_like(adv), adv)
    return adv.reshape(n)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token "k3" KL estimator of KL(pi_theta || pi_ref) (Schulman, 2020).

    ``exp(ref - logp) - (ref - logp) - 1``; elementwise, any (matching) shape.
    Always >= 0 and exactly 0 where ``ref == logp``.
    """
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities of ``targets`` under ``softmax(logits / temperature)``.

    Args:
        logits: ``[B, T, V]`` (any float dtype; bf16/fp16 are upcast to fp32
            one batch row at a time).
        targets: ``[B, T]`` integer token ids.
        temperature: sampling temperature (> 0) the tokens were drawn with.

    Returns:
        ``[B, T]`` float tensor (fp32, or fp64 for fp64 logits), differentiable
        w.r.t. ``logits``. Computed as ``gather(logits) - logsumexp(logits)``
        per batch row, so at most one ``[T, V]`` upcast copy exists at a time
        and no ``[B, T, V]`` log-softmax tensor is materialised.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:2]:
        raise ValueError(f"targets shape {tuple(targets.shape)} != logits[:2] {tuple(logits.shape[:2])}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    targets = targets.long()
    rows = []
    for b in range(logits.shape[0]):
        row = logits[b].to(out_dtype)  # [T, V]
        if temperature != 1.0:
            row = row / temperature
        picked = row.gather(-1, targets[b].unsqueeze(-1)).squeeze(-1)  # [T]
        rows.append(picked - torch.logsumexp(row, dim=-1))
    if not rows:
        return logits.new_zeros(targets.shape, dtype=out_dtype)
    return torch.stack(rows, dim=0)


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
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Negative DeepSeekMath GRPO objective (see module docstring).

    Args:
        logprobs: ``[B, T]`` current-policy token log-probs (requires grad).
        old_logprobs: ``[B, T]`` log-probs of the sampling policy (no grad used).
        ref_logprobs: ``[B, T]`` log-probs of the frozen reference policy.
        advantages: ``[B, T]`` or ``[B]`` (broadcast over tokens).
        mask: ``[B, T]``, bool or float; 1 for response tokens. Values of the
            other inputs at masked-out positions are ignored (may be inf/NaN).
        clip_eps: PPO clip range ``eps``; ratio clipped to ``[1-eps, 1+eps]``.
        kl_coef: ``beta``, weight of the k3 KL penalty.
        num_sequences: normaliser for the sum over sequences. ``None`` means
            ``B`` (plain mean over this batch). Pass the number of sequences in
            the *whole* optimiser step when splitting it into micro-batches:
            then summing the returned losses (and accumulating gradients) over
            the micro-batches gives exactly the full-batch loss and gradient.

    Per sequence ``i`` with ``n_i`` masked tokens::

        obj_i = 1/n_i * sum_t [ min(r*A, clip(r)*A) - kl_coef * k3 ]
        loss  = -sum_i obj_i / num_sequences

    Sequences with ``n_i == 0`` contribute exactly 0.

    Returns:
        ``(loss, metrics)``; ``loss`` is a scalar tensor. ``metrics`` holds
        Python floats: ``loss``; ``pg_loss`` (``-sum_i mean_t pg / N``) and
        ``kl`` (``sum_i mean_t k3 / N``), so ``loss = pg_loss + kl_coef * kl``
        and, like the loss, they sum over micro-batches when ``num_sequences``
        is given; token-level statistics over this batch's masked tokens:
        ``clip_frac`` (fraction where clipping was active: ratio outside
        ``[1-eps, 1+eps]`` *and* the clipped term strictly smaller than the
        unclipped one, i.e. the min selected the clipped term and the token
        gets no policy gradient), ``ratio_mean``, ``ratio_max``, ``adv_mean``
        (mean advantage over masked tokens). All are 0.0 with no masked tokens.
    """
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
    denom = shape[0] if num_sequences is None else int(num_sequences)
    if denom <= 0:
        raise ValueError(f"num_sequences must be positive, got {num_sequences}")

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
    kl = k3_kl(logp, ref)

    n_tokens = keep.to(dtype).sum(dim=-1).clamp(min=1.0)  # [B]
    pg_seq = torch.where(keep, pg, zeros).sum(dim=-1) / n_tokens
    kl_seq = torch.where(keep, kl, zeros).sum(dim=-1) / n_tokens
    obj_seq = pg_seq - kl_coef * kl_seq
    loss = -obj_seq.sum() / denom

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
            "pg_loss": float((-pg_seq.sum() / denom).item()),
            "kl": float((kl_seq.sum() / denom).item()),
            "clip_frac": float(clipped.sum().item()) / n_total if n_total else 0.0,
            "ratio_mean": float(masked_mean(ratio, keep).item()),
            "ratio_max": ratio_max,
            "adv_mean": float(masked_mean(adv, keep).item()),
        }
    return loss, metrics
