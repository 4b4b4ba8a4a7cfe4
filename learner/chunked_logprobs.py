"""Token log-probabilities with a log-softmax of their own backward, chunk by chunk (pure torch).

``logp[t] = logits[t, target[t]] / tau - logsumexp(logits[t] / tau)``. Written with autograd ops, the
upcast of a bf16 ``[T, V]`` row to fp32 and the log-softmax's input stay alive until backward: for
every row of a micro-batch, a full fp32 copy of its logits (at V=100k, 1024 tokens and 8 rows, 3.2 GB).
Here the forward keeps only the logits it was given and one number per token (the log-sum-exp), and
both passes work through ``chunk_tokens`` positions at a time, so at most one fp32 chunk of
``chunk_tokens x V`` exists at once. The backward writes ``(onehot(target) - softmax) * grad / tau``
straight into a gradient of the logits' own dtype.
"""
from __future__ import annotations

import torch

CHUNK_BYTES = 64 << 20
"""fp32 bytes of one chunk: positions per chunk = CHUNK_BYTES // (4 * V)."""


def chunk_tokens_for(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


class ChunkedTokenLogprobs(torch.autograd.Function):
    """[N, V] logits, [N] targets -> [N] logprobs in fp32 (fp64 for fp64 logits)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, temperature: float, chunk: int) -> torch.Tensor:
        out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        n = logits.shape[0]
        out = torch.empty(n, dtype=out_dtype, device=logits.device)
        lse = torch.empty(n, dtype=out_dtype, device=logits.device)
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            x = logits[start:end].to(out_dtype)
            if temperature != 1.0:
                x = x / temperature
            lse[start:end] = torch.logsumexp(x, dim=-1)
            out[start:end] = x.gather(-1, targets[start:end, None]).squeeze(-1) - lse[start:end]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], chunk):
            end = min(start + chunk, logits.shape[0])
            x = logits[start:end].to(lse.dtype)
            if temperature != 1.0:
                x = x / temperature
            g_out = grad_out[start:end, None].to(lse.dtype)
            g = torch.exp(x - lse[start:end, None]).mul_(g_out).neg_()  # -softmax * grad
            g.scatter_add_(-1, targets[start:end, None], g_out)  # + onehot(target) * grad
            if temperature != 1.0:
                g.div_(temperature)
            grad[start:end] = g
        return grad, None, None, None


def chunked_token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                           chunk_tokens: int | None = None) -> torch.Tensor:
    """``[..., V]`` logits and ``[...]`` targets -> ``[...]`` logprobs (see the module doc)."""
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    picked = targets.reshape(-1).long()
    chunk = chunk_tokens or chunk_tokens_for(vocab)
    return ChunkedTokenLogprobs.apply(flat, picked, float(temperature), chunk).reshape(targets.shape)
