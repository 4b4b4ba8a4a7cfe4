"""Logprobs of a micro-batch's response tokens under a Hugging Face causal LM (policy or reference).

Three forwards give the same values: ``batch_logprobs`` runs every row's prompt + response;
``shared_prompt_logprobs`` runs each distinct prompt once and its responses on top of its key/value
cache (``learner.shared_prompt``); ``packed_logprobs`` runs the micro-batch as one unpadded row behind a
4-D mask (``learner.packed_sequences``). ``micro_batch_logprobs`` runs the one
``learner.micro_batch_plan.choose_forward`` picked. The attention kernel is chosen per micro-batch width on
CPU (``switch_attention``).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

from learner.algorithm import token_logprobs
from learner.batching import TokenBatch
from learner.packing import PackedLayout
from learner.shared_prompt import SharedPromptLayout

log = logging.getLogger(__name__)


PACKED_ATTENTION = ("eager", "sdpa")
"""Attention kernels that take the packed forward's 4-D mask as given (flash-attention kernels ignore it)."""
EAGER_ATTENTION_MAX_TOKENS = 384
"""CPU, 'auto': widest micro-batch that runs with eager attention. Measured fwd+bwd of 8 rows, SmolLM2-135M
bf16, 2 cores: 3.3 s eager vs 4.0 s sdpa at 130 tokens, 7.1 vs 8.2 s at 300, 21 vs 18.5 s at 600."""


def attention_for_width(setting: str, width: int, on_gpu: bool) -> Optional[str]:
    """The attention kernel for a micro-batch ``width`` tokens wide, or None to keep the model's own."""
    if setting != "auto":
        return setting
    if on_gpu:
        return None
    return "eager" if width <= EAGER_ATTENTION_MAX_TOKENS else "sdpa"


def switch_attention(module, setting: str, width: int, on_gpu: bool) -> str:
    """Give a Hugging Face ``module`` the kernel ``attention_for_width`` picks; returns the setting to use
    from now on (a model that cannot switch keeps its own kernel, whose name then replaces ``setting``)."""
    wanted = attention_for_width(setting, width, on_gpu)
    if not wanted or getattr(module.config, "_attn_implementation", wanted) == wanted:
        return setting
    module.set_attn_implementation(wanted)
    kept = module.config._attn_implementation
    if kept != wanted:
        log.warning("%s cannot switch attention to %s; keeping %s", type(module).__name__, wanted, kept)
        return kept
    return setting


def batch_logprobs(model, mb: TokenBatch, temperature: float, device=torch.device("cpu"),
                   window: bool = True) -> torch.Tensor:
    """[b, w-1] fp32 logprobs of a micro-batch's targets under ``model`` (0 before its response window).

    With ``window`` only positions from ``mb.response_window()`` on go through the LM head
    (``logits_to_keep``, which Hugging Face causal LMs accept): prompt positions never score a response
    token, and for a small model the head over its vocabulary is a large share of the forward.
    """
    ids = mb.input_ids.to(device)
    width = mb.targets.shape[1]
    start = mb.response_window() if window else 0
    kwargs = {"logits_to_keep": torch.arange(start, width, device=device)} if window else {}
    logits = model(input_ids=ids, attention_mask=mb.attention_mask.to(device), **kwargs).logits
    if not window:
        logits = logits[:, :-1]
    lp = token_logprobs(logits, mb.targets[:, start:].to(device), temperature).float()
    return torch.cat([lp.new_zeros(len(mb), start), lp], dim=1) if start else lp


def shared_prompt_logprobs(model, mb: TokenBatch, temperature: float, device=torch.device("cpu"),
                           pad_id: int = 0) -> torch.Tensor:
    """``batch_logprobs`` computed with each distinct prompt of the micro-batch through the model once.

    The prompts (but their last token) run left-padded with their own positions through the decoder
    alone (no LM head); their key/value cache is copied row by row (``index_select``, differentiable, so
    the gradients of all rows flow back into their prompt's single pass), and each row's prompt-last
    token and response run against it with the row's attention mask and positions.
    """
    lay = SharedPromptLayout.build(mb, pad_id)
    cache = None
    if lay.prompt_ids.shape[1]:  # else every prompt is one token long: nothing to cache
        decoder = getattr(model, "module", model).get_decoder()
        cache = decoder(input_ids=lay.prompt_ids.to(device), attention_mask=lay.prompt_mask.to(device),
                        position_ids=lay.prompt_positions.to(device), use_cache=True).past_key_values
        if cache is None or cache.get_seq_length() != lay.prompt_ids.shape[1]:  # gradient checkpointing leaves it empty
            raise RuntimeError(f"{type(decoder).__name__} kept no key/value cache of the prompts (gradient checkpointing "
                               "in training turns it off); set learner.shared_prompt=false")
        cache.reorder_cache(lay.owner.to(device))
    logits = model(input_ids=lay.input_ids.to(device), attention_mask=lay.attention_mask.to(device),
                   position_ids=lay.positions.to(device), past_key_values=cache, use_cache=cache is not None).logits
    return lay.place(token_logprobs(logits, lay.targets.to(device), temperature))


def packed_logprobs(model, mb: TokenBatch, temperature: float, device=torch.device("cpu"),
                    window: bool = True) -> torch.Tensor:
    """``batch_logprobs`` computed in one pass over the micro-batch packed into a single row
    (``learner.packing``): each distinct prompt once, no padding, a 4-D mask that lets every token see
    exactly what it sees in the plain forward. With ``window`` (the model takes ``logits_to_keep``) only the
    positions that score a response token go through the LM head.
    """
    module = getattr(model, "module", model)
    kernel = getattr(module.config, "_attn_implementation", None)
    if kernel not in PACKED_ATTENTION:
        raise RuntimeError(f"packed forward needs attention that takes a 4-D mask {PACKED_ATTENTION}, the model uses "
                           f"{kernel!r}; set learner.packed_sequences=false")
    lay = PackedLayout.build(mb)
    mask = lay.attention_mask(module.get_input_embeddings().weight.dtype, device)
    score_at = lay.score_at.to(device)
    kwargs = {"logits_to_keep": score_at} if window else {}
    logits = model(input_ids=lay.input_ids.to(device), attention_mask=mask, position_ids=lay.positions.to(device),
                   **kwargs).logits
    if not window:
        logits = logits[:, score_at]
    return lay.place(token_logprobs(logits, lay.targets[None].to(device), temperature)[0].float())


def micro_batch_logprobs(model, mb: TokenBatch, temperature: float, forward: str = "plain", device=torch.device("cpu"),
                         window: bool = True, pad_id: int = 0) -> torch.Tensor:
    """[b, w-1] logprobs of the micro-batch through ``forward``: 'plain', 'shared' or 'packed'."""
    if forward == "shared":
        return shared_prompt_logprobs(model, mb, temperature, device, pad_id)
    if forward == "packed":
        return packed_logprobs(model, mb, temperature, device, window)
    if forward != "plain":
        raise ValueError(f"unknown forward {forward!r}")
    return batch_logprobs(model, mb, temperature, device, window)
