"""Learned reward models: a causal-LM backbone with a scalar head, in Hugging Face format.

One class of model serves both kinds:

* outcome reward model (ORM, the paper's r_phi): the head's value at the response's last token
  is the logit of "this final answer is right";
* process reward model (PRM): the head's value at the last token of each reasoning step is the
  logit of "this step still leads to a right answer" (Math-Shepherd).

A checkpoint is an ``AutoModelForSequenceClassification`` folder with ``num_labels=1`` (loadable
by transformers, TRL or vLLM's reward runner) whose config carries ``grpo_reward_kind``. The input
is the question in the reward model's own chat template followed by the response's steps, each
tokenised on its own, so step boundaries are exact whatever the tokenizer (``encode_sample``).
Training (``learner.reward_trainer``) and serving (``RewardModel``) share the encoding and
``token_values``.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import torch

from orchestrator.types import Problem

log = logging.getLogger(__name__)

KIND_KEY = "grpo_reward_kind"
KINDS = ("orm", "prm")


class RewardModelError(RuntimeError):
    """A reward model failed to load or to score; the message names the model and the sample."""


def load_backbone(path: str, kind: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """(model, tokenizer): a reward-model checkpoint, or a causal LM given a new scalar head."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    if kind not in KINDS:
        raise ValueError(f"reward model kind must be one of {KINDS}, got {kind!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, num_labels=1)
        if config.pad_token_id is None:
            config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        saved_kind = getattr(config, KIND_KEY, None)
        if saved_kind is not None and saved_kind != kind:
            raise RewardModelError(f"reward model at {path!r} is a {saved_kind!r} model, not {kind!r}")
        setattr(config, KIND_KEY, kind)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, dtype=dtype, trust_remote_code=trust_remote_code)
    except RewardModelError:
        raise
    except Exception as e:  # noqa: BLE001 - one clear line naming the model for any loading failure
        raise RewardModelError(f"{kind} reward model at {path!r} failed to load: {type(e).__name__}: {e}") from e
    if saved_kind is None:
        log.info("%s: new %s head on backbone %s", kind, _head(model).__class__.__name__, path)
    return model, tokenizer


def _head(model) -> torch.nn.Module:
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise RewardModelError(f"{type(model).__name__} has no scalar head ('score' or 'classifier')")


def token_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] the head's scalar at every position (the logit of 'correct so far')."""
    base = getattr(model, model.base_model_prefix)
    hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return _head(model)(hidden).squeeze(-1).float()


def encode_sample(tokenizer, problem: Problem, steps: Sequence[str], system_prompt: Optional[str],
                  max_prompt_tokens: int) -> tuple[list[int], list[int]]:
    """(input ids, index of the last token of each step). Empty steps still get a position."""
    from orchestrator.data import encode_prompts

    ids = list(encode_prompts(tokenizer, [problem], system_prompt, max_prompt_tokens)[0])
    ends = []
    for step in steps:
        piece = tokenizer.encode(step, add_special_tokens=False) if step else []
        ids.extend(int(t) for t in piece)
        ends.append(len(ids) - 1)
    return ids, ends


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), right-padded to the longest sequence."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def step_values(values: torch.Tensor, ends: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Per row, the values at its step ends (a 1-D tensor each)."""
    return [values[i, torch.tensor(list(e), dtype=torch.long, device=values.device)] for i, e in enumerate(ends)]


class RewardModel:
    """A loaded reward model that scores (question, steps) pairs in batches; no Ray, no DeepSpeed.
    ``dtype`` ('float32' or 'bfloat16') is what it computes in; scores come back as fp32 floats."""

    def __init__(self, path: str, kind: str, system_prompt: Optional[str] = None, max_prompt_tokens: int = 512,
                 batch_size: int = 16, trust_remote_code: bool = False, version: int = 0, dtype: str = "float32"):
        self.path, self.kind, self.version = path, kind, version
        self.system_prompt, self.max_prompt_tokens, self.batch_size = system_prompt, max_prompt_tokens, batch_size
        self.model, self.tokenizer = load_backbone(path, kind, dtype=getattr(torch, dtype),
                                                   trust_remote_code=trust_remote_code)
        self.model.eval()
        self.pad_id = self.model.config.pad_token_id

    @torch.no_grad()
    def score(self, requests: Sequence[tuple[Problem, Sequence[str]]]) -> list[list[float]]:
        """Per request, P(correct) at each step end (ORM: the last one only, as a list of one)."""
        out: list[list[float]] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            encoded = [encode_sample(self.tokenizer, p, steps, self.system_prompt, self.max_prompt_tokens)
                       for p, steps in chunk]
            ids, mask = pad_right([e[0] for e in encoded], self.pad_id)
            values = token_values(self.model, ids, mask)
            ends = [e[1][-1:] if self.kind == "orm" else e[1] for e in encoded]
            for (problem, _), v in zip(chunk, step_values(values, ends)):
                if not torch.isfinite(v).all():
                    raise RewardModelError(f"{self.kind} model {self.path!r} gave a non-finite score for {problem.uid!r}")
                out.append(torch.sigmoid(v).tolist())
        return out


def save_reward_model(model, tokenizer, out_dir: str, state_dict: Optional[dict] = None) -> str:
    """Write a reward-model checkpoint atomically (a crash mid-save leaves the old folder intact)."""
    import shutil

    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir
