"""The GRPO learner: a DeepSpeed engine for the policy plus a frozen reference model.

Plain Python; ``learner.actor`` wraps it in a Ray actor and sets up the process group. One call to
``train_step`` is one exploration step of DeepSeekMath's Algorithm 1: it recomputes the old-policy
and reference logprobs once, then applies ``mu`` policy updates over the whole batch, accumulating
gradients over micro-batches so the update equals a single full-batch step.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Optional

import torch

from learner.algorithm import grpo_loss, token_logprobs
from learner.batching import TokenBatch

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """A loss or logprob became NaN/inf; raised before the optimizer touches the weights."""


def resolve_dtype(name: str, on_gpu: bool) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def deepspeed_config(lcfg, micro_batch_size: int, grad_accum: int, world_size: int, bf16: bool) -> dict:
    """The DeepSpeed JSON config for one learner; the optimizer is passed in as an object."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "zero_optimization": {"stage": lcfg.zero_stage},
        "gradient_clipping": lcfg.grad_clip,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class PolicyTrainer:
    """Owns the policy (DeepSpeed) and the reference model; computes logprobs and GRPO updates."""

    def __init__(self, cfg, batch_size: int, world_size: int = 1, rank: int = 0):
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.on_gpu = torch.cuda.is_available() and cfg.learner.num_gpus > 0
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.on_gpu else torch.device("cpu")
        self.dtype = resolve_dtype(cfg.model.dtype, self.on_gpu)
        self.temperature = cfg.rollout.temperature
        self.version = 0
        self.micro_batch_size = cfg.learner.micro_batch_size
        per_rank = batch_size // world_size
        if per_rank % self.micro_batch_size:
            raise ValueError(f"per-rank batch {per_rank} is not a multiple of learner.micro_batch_size={self.micro_batch_size}")
        self.grad_accum = per_rank // self.micro_batch_size

        path, trc = cfg.model.path, cfg.model.trust_remote_code
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trc)
        policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trc)
        if cfg.learner.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        self.reference = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype, trust_remote_code=trc)
        self.reference.requires_grad_(False).eval().to(self.device)
        optimizer = torch.optim.AdamW(
            policy.parameters(), lr=cfg.learner.lr, betas=tuple(cfg.learner.adam_betas), weight_decay=cfg.learner.weight_decay
        )
        ds_cfg = deepspeed_config(cfg.learner, self.micro_batch_size, self.grad_accum, world_size, self.dtype == torch.bfloat16)
        self.engine, *_ = deepspeed.initialize(model=policy, optimizer=optimizer, config=ds_cfg)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    # --------------------------------------------------------------------------- logprobs
    def _logprobs(self, model, mb: TokenBatch) -> torch.Tensor:
        ids = mb.input_ids.to(self.device)
        logits = model(input_ids=ids, attention_mask=mb.attention_mask.to(self.device)).logits
        return token_logprobs(logits[:, :-1], mb.targets.to(self.device), self.temperature).float()

    @torch.no_grad()
    def _frozen_logprobs(self, model, batch: TokenBatch) -> torch.Tensor:
        was_training = model.training
        model.eval()
        chunks = []
        for start in range(0, len(batch), self.micro_batch_size):
            mb = batch.slice(start, start + self.micro_batch_size)
            lp = self._logprobs(model, mb)
            padded = torch.zeros(len(mb), batch.targets.shape[1], device=lp.device)
            padded[:, : lp.shape[1]] = lp
            chunks.append(padded)
        model.train(was_training)
        return torch.cat(chunks).cpu() * batch.response_mask

    def sequence_logprobs(self, batch: TokenBatch, reference: bool = False) -> torch.Tensor:
        """[B, L-1] logprobs of the targets under the current policy (or the reference), 0 off-response."""
        return self._frozen_logprobs(self.reference if reference else self.engine.module, batch)

    # ------------------------------------------------------------------------------ train
    def train_step(self, batch: TokenBatch, step: int) -> dict:
        """mu GRPO updates on one exploration step's batch; returns aggregated metrics.

        The old-policy logprobs are the policy's own logprobs in the first update (the weights only
        change at the end of it, after the last micro-batch), so they cost no extra forward pass and
        the first update's ratio is exactly 1. Later updates (mu > 1) reuse them.
        """
        algo = self.cfg.algorithm
        t0 = time.time()
        mask = batch.response_mask
        ref = self.sequence_logprobs(batch, reference=True) if algo.kl_coef > 0 else None
        for name, t in (("reference logprobs", ref), ("advantages", batch.advantages)):
            if t is not None and not torch.isfinite(t).all():
                raise NonFiniteError(f"step {step}: non-finite {name} in a batch of {len(batch)} sequences")
        metrics = {"time/learner_ref_s": time.time() - t0}
        old = torch.zeros_like(mask)
        total = len(batch) * self.world_size
        sums: dict[str, float] = {}
        for update in range(algo.mu):
            for start in range(0, len(batch), self.micro_batch_size):
                end = start + self.micro_batch_size
                mb = batch.slice(start, end)
                width = mb.targets.shape[1]
                logp = self._logprobs(self.engine, mb)
                if not torch.isfinite(logp.detach() * mb.response_mask.to(logp.device)).all():
                    raise NonFiniteError(f"step {step}, update {update}, sequences {start}-{end}: non-finite policy logprobs")
                if update == 0:
                    old[start:end, :width] = logp.detach().cpu() * mb.response_mask
                mb_ref = ref[start:end, :width] if ref is not None else old[start:end, :width]
                loss, m = grpo_loss(
                    logp, old[start:end, :width].to(self.device), mb_ref.to(self.device),
                    mb.advantages.to(self.device), mb.response_mask.to(self.device),
                    clip_eps=algo.clip_eps, kl_coef=algo.kl_coef, num_sequences=total,
                )
                if not torch.isfinite(loss):
                    raise NonFiniteError(f"step {step}, update {update}, sequences {start}-{end}: loss is {loss.item()}")
                self.engine.backward(loss, scale_wrt_gas=False)
                self.engine.step()
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + v
        n_tok = float(mask.sum().clamp(min=1))
        metrics["rollout/logprob_abs_diff"] = float(((old - batch.sampler_logprobs).abs() * mask).sum() / n_tok)
        n_mb = algo.mu * math.ceil(len(batch) / self.micro_batch_size)
        for k in ("loss", "pg_loss", "kl"):  # these add up over micro-batches to the full-batch value
            metrics[f"loss/{k}"] = sums.get(k, 0.0) / algo.mu
        for k in ("clip_frac", "ratio_mean", "adv_mean"):
            metrics[f"loss/{k}"] = sums.get(k, 0.0) / n_mb
        grad_norm = self.engine.get_global_grad_norm()
        metrics["loss/grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        self.version += 1
        metrics["time/learn_s"] = time.time() - t0
        return metrics

    # ------------------------------------------------------------------------------ weights
    def export_state_dict(self, dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
        """Full policy weights in Hugging Face names (gathered under ZeRO-3), tied copies dropped."""
        import deepspeed

        module = self.engine.module
        tied = getattr(module.config, "tie_word_embeddings", False)
        out = {}
        for name, param in module.named_parameters():
            if tied and name == "lm_head.weight":
                continue
            with deepspeed.zero.GatheredParameters([param], enabled=hasattr(param, "ds_id")):
                out[name] = param.detach().to(dtype or param.dtype).cpu().contiguous()
        for name, buf in module.named_buffers():
            if name.endswith("inv_freq"):  # recomputed by every loader
                continue
            out.setdefault(name, buf.detach().cpu().contiguous())
        return out

    def save_pretrained(self, out_dir: str) -> str:
        """Write the policy as a Hugging Face folder (model + tokenizer) loadable by transformers and vLLM."""
        os.makedirs(out_dir, exist_ok=True)
        state = self.export_state_dict(torch.float32 if not self.on_gpu else self.dtype)
        self.engine.module.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir)
        return out_dir

    def reset_reference(self) -> None:
        """Make the reference model a copy of the current policy (Iterative RL)."""
        self.reference.load_state_dict(self.export_state_dict(self.dtype), strict=False)
