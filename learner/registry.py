"""Named, swappable pieces of the GRPO objective (pure ``torch`` + standard library).

A :class:`Registry` maps a config string to a function, so that choosing a variant is a
lookup (``KL_ESTIMATORS.get("k2")``) rather than an if-chain, and an unknown name fails
with the list of known ones. :mod:`learner.algorithm` re-exports everything here; import
from there.

KL estimators (per token, elementwise on ``[B, T]``; ``d = logp - ref = log(pi/pi_ref)``,
Schulman 2020, "Approximating KL divergence"), all estimate ``KL(pi_theta || pi_ref)``
for tokens sampled from ``pi_theta``:

    "k1":  d                            unbiased, can be negative, high variance
    "k2":  d^2 / 2                      biased, >= 0, low variance
    "k3":  exp(-d) + d - 1              unbiased, >= 0, low variance (DeepSeekMath)
           = pi_ref/pi - log(pi_ref/pi) - 1

Loss aggregations reduce a per-token quantity ``x [B, T]`` with mask ``m`` (``n_i`` =
masked tokens of sequence ``i``) to a scalar:

    "seq-mean-token-mean":  sum_i (sum_t m_it x_it / max(n_i, 1)) / S     (DeepSeekMath)
    "token-mean":           sum_i sum_t m_it x_it / K
    "seq-mean-token-sum":   sum_i sum_t m_it x_it / S

``S = num_sequences`` if given, else ``B``; ``K = num_tokens`` if given, else the
batch's masked-token count (at least 1). Every aggregation is a sum of per-sequence
terms over a fixed denominator, so passing the *whole optimiser step's* ``S`` / ``K`` to
each micro-batch makes the micro-batch losses (and gradients) sum exactly to the
full-batch ones.
"""

from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, List, Optional, TypeVar

import torch

__all__ = [
    "Registry",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "k1_kl",
    "k2_kl",
    "k3_kl",
    "aggregate_seq_mean_token_mean",
    "aggregate_token_mean",
    "aggregate_seq_mean_token_sum",
]

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """A name -> callable table with a registering decorator.

    ``kind`` (e.g. ``"KL estimator"``) only appears in error messages. Names are
    case-sensitive; registering a name twice is an error.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: ``@REG.register("name")`` adds the function and returns it unchanged."""

        def add(fn: F) -> F:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            return fn

        return add

    def get(self, name: str) -> F:
        """The callable registered as ``name``; ``ValueError`` listing known names if none."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            known = ", ".join(repr(n) for n in self.names())
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> List[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


# ------------------------------------------------------------------ KL estimators

KL_ESTIMATORS: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def k1_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token "k1" estimator ``logp - ref = log(pi_theta / pi_ref)``; may be negative."""
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2")
def k2_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token "k2" estimator ``0.5 * (logp - ref)^2``; >= 0."""
    return 0.5 * (logprobs - ref_logprobs).pow(2)


@KL_ESTIMATORS.register("k3")
def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token "k3" KL estimator of KL(pi_theta || pi_ref) (Schulman, 2020).

    ``exp(ref - logp) - (ref - logp) - 1``; elementwise, any (matching) shape.
    Always >= 0 and exactly 0 where ``ref == logp``.
    """
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


# ------------------------------------------------------------- loss aggregations

Aggregation = Callable[[torch.Tensor, torch.Tensor, Optional[int], Optional[float]], torch.Tensor]
LOSS_AGGREGATIONS: Registry[Aggregation] = Registry("loss aggregation")


def _masked_rows(per_token: torch.Tensor, mask: torch.Tensor):
    """``(keep [B, T] bool, per-token values with masked-out entries exactly 0)``."""
    if per_token.dim() != 2 or mask.shape != per_token.shape:
        raise ValueError(
            f"per_token must be [B, T] and mask the same shape, got {tuple(per_token.shape)} "
            f"and {tuple(mask.shape)}"
        )
    keep = mask if mask.dtype == torch.bool else mask != 0
    return keep, torch.where(keep, per_token, torch.zeros_like(per_token))


def _num_sequences(per_token: torch.Tensor, num_sequences: Optional[int]) -> int:
    denom = per_token.shape[0] if num_sequences is None else int(num_sequences)
    if denom <= 0:
        raise ValueError(f"num_sequences must be positive, got {num_sequences}")
    return denom


@LOSS_AGGREGATIONS.register("seq-mean-token-mean")
def aggregate_seq_mean_token_mean(
    per_token: torch.Tensor, mask: torch.Tensor,
    num_sequences: Optional[int] = None, num_tokens: Optional[float] = None,
) -> torch.Tensor:
    """``sum_i mean_t x_it / num_sequences`` (each sequence weighs the same; paper default).

    A sequence with no masked tokens contributes 0. ``num_tokens`` is ignored.
    """
    keep, x = _masked_rows(per_token, mask)
    denom = _num_sequences(per_token, num_sequences)
    n_i = keep.to(per_token.dtype).sum(dim=-1).clamp(min=1.0)
    return (x.sum(dim=-1) / n_i).sum() / denom


@LOSS_AGGREGATIONS.register("token-mean")
def aggregate_token_mean(
    per_token: torch.Tensor, mask: torch.Tensor,
    num_sequences: Optional[int] = None, num_tokens: Optional[float] = None,
) -> torch.Tensor:
    """``sum_{i,t} x_it / num_tokens`` (each token weighs the same; long outputs weigh more).

    ``num_tokens=None`` uses this batch's masked-token count (an empty batch gives 0).
    ``num_sequences`` is ignored.
    """
    keep, x = _masked_rows(per_token, mask)
    if num_tokens is None:
        denom = keep.to(per_token.dtype).sum().clamp(min=1.0)
    else:
        if not float(num_tokens) > 0:
            raise ValueError(f"num_tokens must be positive, got {num_tokens}")
        denom = float(num_tokens)
    return x.sum() / denom


@LOSS_AGGREGATIONS.register("seq-mean-token-sum")
def aggregate_seq_mean_token_sum(
    per_token: torch.Tensor, mask: torch.Tensor,
    num_sequences: Optional[int] = None, num_tokens: Optional[float] = None,
) -> torch.Tensor:
    """``sum_i sum_t x_it / num_sequences`` (token sums: no per-length normalisation).

    ``num_tokens`` is ignored.
    """
    _, x = _masked_rows(per_token, mask)
    return x.sum() / _num_sequences(per_token, num_sequences)
