"""The GRPO learner: a DeepSpeed engine for the policy plus a frozen reference model.

Plain Python; ``learner.actor`` wraps it in a Ray actor and sets up the process group. One call to
``train_step`` is one exploration step of DeepSeekMath's Algorithm 1: it computes the reference
logprobs and the advantages once, then applies ``mu`` policy updates over the whole batch,
accumulating gradients over micro-batches so each update equals a single full-batch step.
"""
from __future__ import annotations

import inspect
import math
import os
import time
from dataclasses import replace
from typing import Callable, Optional

import torch

from learner.algorithm import check_finite, grpo_loss, kl_penalized_rewards, outcome_advantages, process_advantages
from learner.batching import TokenBatch
from learner.logprobs import PACKED_ATTENTION, micro_batch_logprobs, switch_attention
from learner.micro_batch_plan import (
    ForwardOptions, attention_pair_weight, pass_overhead_tokens, plan_micro_batches,
)
from learner.packing import packed_tokens
from learner.reference_cache import ReferenceCache
from learner.state_io import RNG_FILE, load_engine_state, load_rng_state, save_engine_state, save_rng_state


def resolve_dtype(name: str, on_gpu: bool) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def resolve_zero_stage(setting: Optional[int], world_size: int) -> int:
    """``learner.zero_stage``; None: 0 for a single rank (nothing to partition; ZeRO-2's gradient
    buckets only add copies: 2.7 s of a 10-13 s bf16 step on CPU), 2 for several."""
    if setting is not None:
        return setting
    return 0 if world_size == 1 else 2


def deepspeed_config(grad_clip: float, micro_batch_size: int, grad_accum: int, world_size: int, bf16: bool,
                     zero_stage: int) -> dict:
    """The DeepSpeed JSON config for one learner (``zero_stage`` resolved by ``resolve_zero_stage``); the
    optimizer is passed in as an object."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "zero_optimization": {"stage": zero_stage},
        "gradient_clipping": grad_clip,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def run_updates(batch: TokenBatch, old: torch.Tensor, ref: Optional[torch.Tensor], fill_old: bool, algo,
                micro_batch_size: int, counts: tuple[int, float], forward: Callable, backward: Callable,
                context: str, device=torch.device("cpu"), options: ForwardOptions = ForwardOptions()) -> dict:
    """The mu x micro-batch loop of one exploration step; returns summed per-micro-batch metrics.

    Micro-batches and their forwards are ``plan_micro_batches``'s (rows of similar length, or of one
    prompt when a forward that shares prompts, as ``options`` allow, costs less); every update uses the
    same plan.

    ``forward(mb, name) -> [b, w-1] logprobs`` (with grad; ``name``: 'plain', 'shared' or 'packed'),
    ``backward(loss)`` accumulates (and steps at the boundary). ``counts`` = (sequences, response tokens) of the whole step over all ranks, so the
    accumulated gradient does not depend on the micro-batch size. With ``fill_old`` the first update's
    own logprobs become ``old`` (in place).
    """
    loss_kl_coef = algo.kl_coef if algo.kl_placement == "loss" else 0.0
    sums: dict[str, float] = {}
    plan = plan_micro_batches(batch, micro_batch_size, options)
    for name in ("shared", "packed"):
        sums[f"{name}_rows"] = float(sum(len(rows) for rows, how in plan if how == name))
    for update in range(algo.mu):
        for index, (rows, how) in enumerate(plan):
            mb = batch.select(rows)
            width = mb.targets.shape[1]
            mb_mask = mb.response_mask.to(device)
            logp = forward(mb, how)
            where = f"{context}, update {update}, micro-batch {index} (rows {rows[0]}..)"
            check_finite("policy logprobs", logp.detach() * mb_mask, where)
            if fill_old and update == 0:
                old[rows, :width] = logp.detach().cpu() * mb.response_mask
            mb_old = old[rows, :width].to(device)
            mb_ref = ref[rows, :width].to(device) if ref is not None else mb_old
            loss, m = grpo_loss(
                logp, mb_old, mb_ref, mb.advantages.to(device), mb_mask,
                clip_eps=algo.clip_eps, kl_coef=loss_kl_coef, kl_estimator=algo.kl_estimator,
                loss_agg=algo.loss_agg, num_sequences=counts[0], num_tokens=counts[1],
            )
            check_finite("loss", loss.detach(), where)
            backward(loss)
            for k, v in m.items():
                sums[k] = max(sums.get(k, v), v) if k == "ratio_max" else sums.get(k, 0.0) + v
    return sums


def without_dropout(config):
    """``config`` with every dropout probability at 0 (``*dropout*`` and GPT-2's ``*_pdrop`` fields): the
    policy trains in training mode, and GRPO's ratio compares it with no-grad passes of the same weights."""
    for name, value in config.to_dict().items():
        if ("dropout" in name or name.endswith("pdrop")) and isinstance(value, float) and value > 0:
            setattr(config, name, 0.0)
    return config


def accumulated_grad_norm(module: torch.nn.Module) -> float:
    """L2 norm of the gradients accumulated on ``module``'s parameters (after the all-reduce, before clipping)."""
    norms = [torch.linalg.vector_norm(p.grad.float()) for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


class PolicyTrainer:
    """Owns the policy (DeepSpeed) and the reference model; computes logprobs and GRPO updates."""

    def __init__(self, cfg, batch_size: int, world_size: int = 1, rank: int = 0):
        import deepspeed
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

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
        self.attention = cfg.learner.attn_implementation
        attn = {} if self.attention == "auto" else {"attn_implementation": self.attention}
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trc)
        config = without_dropout(AutoConfig.from_pretrained(path, trust_remote_code=trc))
        policy = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32, trust_remote_code=trc,
                                                      **attn)
        if cfg.learner.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        # transformers loads in eval mode, and checkpoints activations only in training mode; without
        # dropout, training mode computes the same function as the no-grad passes (ratio 1 at mu=1)
        policy.train()
        self.reference = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype, trust_remote_code=trc, **attn)
        self.reference.requires_grad_(False).eval().to(self.device)
        linear_params = sum(p.numel() for p in policy.parameters()) - policy.get_input_embeddings().weight.numel()
        self.pair_weight = attention_pair_weight(policy.config, linear_params)
        self.reference_version = 0  # +1 at every reset or load: cached reference logprobs of another version are stale
        self.reference_cache = ReferenceCache()
        optimizer = torch.optim.AdamW(  # fused: one kernel over all tensors, 9x faster than the loop on CPU
            policy.parameters(), lr=cfg.learner.lr, betas=tuple(cfg.learner.adam_betas),
            weight_decay=cfg.learner.weight_decay, fused=True,
        )
        self.zero_stage = resolve_zero_stage(cfg.learner.zero_stage, world_size)
        ds_cfg = deepspeed_config(cfg.learner.grad_clip, self.micro_batch_size, self.grad_accum, world_size,
                                  self.dtype == torch.bfloat16, self.zero_stage)
        self.engine, *_ = deepspeed.initialize(model=policy, optimizer=optimizer, config=ds_cfg)
        # DeepSpeed's bf16 and ZeRO optimizers record the gradient norm; plain fp32 (ZeRO-0) clips without keeping it
        self.engine_reports_grad_norm = self.engine.bfloat16_enabled() or self.engine.zero_optimization()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.keeps_logits = "logits_to_keep" in inspect.signature(type(policy).forward).parameters
        self.forward_reference, self.forward_policy_eval, self.forward_policy_train = self._forward_options()

    def _forward_options(self) -> tuple[ForwardOptions, ForwardOptions, ForwardOptions]:
        """Forwards the reference, the policy's no-grad logprobs and its training passes may use.

        Shared prompts (learner.shared_prompt) need the key/value cache, which gradient checkpointing turns
        off in training, and two passes, which under ZeRO-3 with several ranks every rank must run alike
        (each pass all-gathers the parameters). Packing (learner.packed_sequences) is one pass; None means on
        CPU, where it was measured, with an attention kernel that takes its 4-D mask.
        """
        lcfg = self.cfg.learner
        overhead = pass_overhead_tokens(self.on_gpu, self.dtype) if lcfg.shared_prompt is None else 0
        pack = lcfg.packed_sequences
        if pack is None:
            pack = not self.on_gpu and lcfg.attn_implementation in ("auto", *PACKED_ATTENTION)
        reference = ForwardOptions(share_overhead=None if lcfg.shared_prompt is False else overhead, pack=pack,
                                   pair_weight=self.pair_weight)
        single_pass = replace(reference, share_overhead=None)
        policy_eval = reference if self.world_size == 1 or self.zero_stage < 3 else single_pass
        policy_train = single_pass if lcfg.gradient_checkpointing else policy_eval
        return reference, policy_eval, policy_train

    # --------------------------------------------------------------------------- logprobs
    def _logprobs(self, model, mb: TokenBatch, forward: str) -> torch.Tensor:
        width = packed_tokens(mb) if forward == "packed" else mb.input_ids.shape[1]
        self.attention = switch_attention(getattr(model, "module", model), self.attention, width, self.on_gpu)
        return micro_batch_logprobs(model, mb, self.temperature, forward, self.device, self.keeps_logits, self.pad_id)

    @torch.no_grad()
    def _frozen_logprobs(self, model, batch: TokenBatch, options: ForwardOptions) -> torch.Tensor:
        was_training = model.training
        model.eval()
        out = torch.zeros(len(batch), batch.targets.shape[1])
        for rows, forward in plan_micro_batches(batch, self.micro_batch_size, options):
            mb = batch.select(rows)
            out[rows, : mb.targets.shape[1]] = self._logprobs(model, mb, forward).cpu()
        model.train(was_training)
        return out * batch.response_mask

    def sequence_logprobs(self, batch: TokenBatch, reference: bool = False) -> torch.Tensor:
        """[B, L-1] logprobs of the targets under the current policy (or the reference), 0 off-response."""
        if reference:
            return self._frozen_logprobs(self.reference, batch, self.forward_reference)
        return self._frozen_logprobs(self.engine.module, batch, self.forward_policy_eval)

    def precompute_reference(self, batch: TokenBatch) -> float:
        """Reference logprobs of rows that will be in the next ``train_step`` (scored during generation,
        while the learner is otherwise idle); returns the seconds it took."""
        t0 = time.time()
        threads = torch.get_num_threads()
        if not self.on_gpu:  # the engines decode on the same cores meanwhile: two sets of spinning threads stall both
            torch.set_num_threads(1)
        try:
            logprobs = self.sequence_logprobs(batch, reference=True)
        finally:
            torch.set_num_threads(threads)
        self.reference_cache.store(batch, logprobs, self.reference_version)
        return time.time() - t0

    # ------------------------------------------------------------------------------ train
    def compute_advantages(self, batch: TokenBatch, group_size: int, old, ref) -> torch.Tensor:
        """[B] outcome advantages or [B, L-1] process advantages, as the config selects."""
        algo = self.cfg.algorithm
        if algo.supervision == "process":
            per_row = process_advantages(batch.step_rewards, batch.step_ends, batch.response_lengths, group_size,
                                         eps=algo.adv_eps, normalize_std=algo.normalize_std)
            return batch.scatter_response(per_row)
        rewards = batch.rewards
        if algo.kl_placement == "reward" and ref is not None:
            rewards = kl_penalized_rewards(rewards, old, ref, batch.response_mask, algo.kl_coef, algo.kl_estimator)
        return outcome_advantages(rewards, group_size, eps=algo.adv_eps, normalize_std=algo.normalize_std)

    def _global_counts(self, batch: TokenBatch) -> tuple[int, float]:
        """Sequences and response tokens of the whole step, over all learner ranks."""
        counts = torch.tensor([float(len(batch)), float(batch.response_mask.sum())], device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(counts)
        return int(counts[0].item()), float(counts[1].item())

    def train_step(self, batch: TokenBatch, step: int, group_size: int) -> dict:
        """mu GRPO updates on one exploration step's batch; returns aggregated metrics.

        With ``algorithm.old_logprobs='learner'`` the old-policy logprobs are the policy's own logprobs
        in the first update (the weights only change after its last micro-batch), so they cost no
        extra forward pass and the first update's ratio is exactly 1; later updates (mu > 1) reuse them.
        """
        algo = self.cfg.algorithm
        t0 = time.time()
        context = f"step {step}, batch of {len(batch)} sequences"
        check_finite("rewards", batch.rewards, context)
        ref, cached = None, 0
        if algo.kl_coef > 0:
            ref, cached = self.reference_cache.take(batch, self.reference_version,
                                                    lambda rows: self.sequence_logprobs(rows, reference=True))
            check_finite("reference logprobs", ref, context)
        else:
            self.reference_cache.clear()
        old = None
        if algo.old_logprobs == "sampler":
            old = batch.sampler_logprobs.clone()
        elif algo.kl_placement == "reward" and ref is not None:
            old = self.sequence_logprobs(batch)  # the reward penalty needs them before any update
        batch.advantages = self.compute_advantages(batch, group_size, old, ref)
        check_finite("advantages", batch.advantages, context)
        fill_old = old is None
        old = torch.zeros_like(batch.response_mask) if old is None else old
        num_sequences, num_tokens = self._global_counts(batch)
        metrics = {"time/learner_ref_s": time.time() - t0, "learner/reference_precomputed_frac": cached / len(batch)}

        own_norm = []

        def backward(loss):
            # the loss is already normalised by the whole step's counts (over all ranks), so the step's gradient
            # is the sum of the ranks' gradients; DeepSpeed averages them over the data-parallel group, hence x N
            self.engine.backward(loss * self.world_size if self.world_size > 1 else loss, scale_wrt_gas=False)
            if self.engine.is_gradient_accumulation_boundary() and not self.engine_reports_grad_norm:
                own_norm.append(accumulated_grad_norm(self.engine.module))
            self.engine.step()

        sums = run_updates(batch, old, ref, fill_old, algo, self.micro_batch_size, (num_sequences, num_tokens),
                           lambda mb, forward: self._logprobs(self.engine, mb, forward), backward, context,
                           self.device, self.forward_policy_train)
        mask = batch.response_mask
        metrics["rollout/logprob_abs_diff"] = float(((old - batch.sampler_logprobs).abs() * mask).sum() / mask.sum().clamp(min=1))
        n_mb = algo.mu * math.ceil(len(batch) / self.micro_batch_size)
        for k in ("loss", "pg_loss", "kl"):  # these add up over micro-batches to the full-batch value
            metrics[f"loss/{k}"] = sums.get(k, 0.0) / algo.mu
        for k in ("clip_frac", "ratio_mean", "adv_mean"):
            metrics[f"loss/{k}"] = sums.get(k, 0.0) / n_mb
        metrics["loss/ratio_max"] = sums.get("ratio_max", 0.0)
        metrics["learner/shared_prompt_frac"] = sums["shared_rows"] / len(batch)
        metrics["learner/packed_frac"] = sums["packed_rows"] / len(batch)
        grad_norm = own_norm[-1] if own_norm else self.engine.get_global_grad_norm()
        metrics["loss/grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        self.version += 1
        metrics["time/learn_s"] = time.time() - t0
        return metrics

    # ------------------------------------------------------------------------------ weights
    def export_state_dict(self, dtype: Optional[torch.dtype] = None, include_tied: bool = True,
                          every_rank: bool = False) -> dict[str, torch.Tensor]:
        """Full policy weights in Hugging Face names (gathered under ZeRO-3), as fresh CPU copies.

        ``include_tied`` keeps both names of tied weights (``lm_head.weight`` with the embedding): vLLM's
        CPU backend holds its own packed copy of the head, which a reload without it leaves stale.
        Hugging Face checkpoints leave it out. With several ranks, every rank must call it under ZeRO-3
        (each gather is collective, one parameter at a time); only rank 0 (or every rank, with
        ``every_rank``) keeps the copies, the others return {}.
        """
        import deepspeed

        module = self.engine.module
        keep = every_rank or self.rank == 0
        if not keep and self.zero_stage < 3:
            return {}
        out = {}
        for name, param in module.named_parameters(remove_duplicate=not include_tied):
            with deepspeed.zero.GatheredParameters([param], enabled=hasattr(param, "ds_id")):
                if keep:
                    out[name] = param.detach().to(dtype=dtype or param.dtype, device="cpu", copy=True).contiguous()
        if not keep:
            return {}
        for name, buf in module.named_buffers():
            if name.endswith("inv_freq"):  # recomputed by every loader
                continue
            out.setdefault(name, buf.detach().to(device="cpu", copy=True).contiguous())
        return out

    def save_pretrained(self, out_dir: str) -> str:
        """Write the policy as a Hugging Face folder (model + tokenizer) loadable by transformers and vLLM.

        With several ranks every rank calls it (under ZeRO-3 the weights are gathered from all of them);
        rank 0 writes."""
        state = self.export_state_dict(torch.float32 if not self.on_gpu else self.dtype, include_tied=False)
        if self.rank != 0:
            return out_dir
        os.makedirs(out_dir, exist_ok=True)
        self.engine.module.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir)
        return out_dir

    def save_state(self, out_dir: str) -> None:
        """Everything needed to continue training exactly: DeepSpeed state (weights, optimizer moments,
        counters), the reference model, the RNG; ``resume`` reads it back."""
        from safetensors.torch import save_model

        save_engine_state(self.engine, os.path.join(out_dir, "deepspeed"), {"version": self.version})
        if self.rank == 0:
            save_model(self.reference, os.path.join(out_dir, "reference.safetensors"))
        save_rng_state(os.path.join(out_dir, RNG_FILE.format(rank=self.rank)), self.on_gpu)

    def load_state(self, in_dir: str) -> int:
        """Restore ``save_state``'s folder; returns the policy version (updates applied) it holds."""
        from safetensors.torch import load_model

        client = load_engine_state(self.engine, os.path.join(in_dir, "deepspeed"), "DeepSpeed")
        self.reference_version += 1  # the reference is replaced below
        missing, unexpected = load_model(self.reference, os.path.join(in_dir, "reference.safetensors"), strict=False)
        if unexpected or [m for m in missing if m not in self._tied_names()]:
            raise RuntimeError(f"reference in {in_dir}: missing {missing}, unexpected {unexpected}")
        self.reference.to(self.device)
        load_rng_state(os.path.join(in_dir, RNG_FILE.format(rank=self.rank)), self.on_gpu)
        self.version = int(client["version"])
        return self.version

    def reset_reference(self) -> None:
        """Make the reference model a copy of the current policy (Iterative RL)."""
        self.reference_version += 1
        state = self.export_state_dict(self.dtype, include_tied=False, every_rank=True)
        missing, unexpected = self.reference.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if m not in self._tied_names()]:
            raise RuntimeError(f"reference reset: missing {missing}, unexpected {unexpected}")

    def _tied_names(self) -> set[str]:
        named = dict(self.reference.named_parameters(remove_duplicate=False))
        unique = dict(self.reference.named_parameters())
        return set(named) - set(unique)

    @torch.no_grad()
    def reference_max_diff(self) -> float:
        """max |reference - policy| over all weights (0.0 right after ``reset_reference``)."""
        policy = self.export_state_dict(self.dtype, include_tied=False, every_rank=True)
        ref = {k: v for k, v in self.reference.state_dict().items()}
        return max(float((ref[k].to("cpu", policy[k].dtype) - v).abs().max()) for k, v in policy.items() if k in ref)
