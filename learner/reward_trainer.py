"""Reward-model training on DeepSpeed: outcome (r_phi) and process reward models.

Plain Python; ``learner.actor.RewardModelLearner`` wraps it in a Ray actor. The trainer keeps its
DeepSpeed engine (weights and AdamW state) between calls, so each Iterative RL round *continues*
training the previous r_phi, as DeepSeekMath does. Labels are pointwise (``reward.rm_objective``):
the verifier outcome at the last token (ORM) or a Math-Shepherd step label at each step end (PRM).
"""
from __future__ import annotations

import logging
import random
import time
from typing import Optional, Sequence

import torch

from learner.state_io import load_engine_state, save_engine_state
from learner.trainer import deepspeed_config, resolve_zero_stage
from orchestrator.types import RMSample
from reward.model import encode_sample, load_backbone, pad_right, save_reward_model, step_values, token_values
from reward.rm_objective import binary_accuracy, pointwise_loss, ranking_accuracy

log = logging.getLogger(__name__)


def sample_targets(sample: RMSample, kind: str) -> list[float]:
    """The labels a sample teaches: its outcome (ORM) or one label per step (PRM)."""
    if kind == "orm":
        return [float(sample.label)]
    if len(sample.step_labels) != len(sample.steps):
        raise ValueError(f"PRM sample {sample.problem.uid!r} has {len(sample.step_labels)} step labels "
                         f"for {len(sample.steps)} steps")
    return [float(x) for x in sample.step_labels]


def freeze_all_but_last(model, num_layers: int) -> int:
    """Leave trainable only the scalar head, the final norm and the last ``num_layers`` layers; returns
    the number of trainable parameters. Cheap reward-model training on small machines."""
    base = getattr(model, model.base_model_prefix)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"reward_model.train_last_layers: {type(base).__name__} has no 'layers' list to pick from")
    model.requires_grad_(False)
    keep = [*layers[-num_layers:], getattr(base, "norm", None), getattr(model, "score", None), getattr(model, "classifier", None)]
    for module in keep:
        if module is not None:
            module.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class RewardModelTrainer:
    """A reward model under a DeepSpeed engine; ``train`` continues from wherever the last call stopped."""

    def __init__(self, rm_cfg, init_path: str, kind: str, system_prompt: Optional[str] = None,
                 max_prompt_tokens: int = 512, on_gpu: bool = False, seed: int = 0, trust_remote_code: bool = False):
        import deepspeed

        self.kind, self.cfg, self.seed = kind, rm_cfg, seed
        self.system_prompt, self.max_prompt_tokens = system_prompt, max_prompt_tokens
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        torch.manual_seed(seed)  # the new head's initialisation
        model, self.tokenizer = load_backbone(init_path, kind, trust_remote_code=trust_remote_code)
        self.pad_id = model.config.pad_token_id
        if rm_cfg.train_last_layers:
            freeze_all_but_last(model, rm_cfg.train_last_layers)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=rm_cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
        ds_cfg = deepspeed_config(grad_clip=1.0, micro_batch_size=rm_cfg.micro_batch_size, grad_accum=1, world_size=1,
                                  bf16=on_gpu, zero_stage=resolve_zero_stage(rm_cfg.zero_stage, world_size=1))
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_cfg)
        self.optimizer_steps = 0
        self.rounds = 0

    def _forward(self, samples: Sequence[RMSample]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels), both 1-D over every labelled position of the batch."""
        encoded = [encode_sample(self.tokenizer, s.problem, s.steps, self.system_prompt, self.max_prompt_tokens)
                   for s in samples]
        ids, mask = pad_right([e[0] for e in encoded], self.pad_id)
        values = token_values(self.engine.module, ids.to(self.device), mask.to(self.device))
        ends = [e[1][-1:] if self.kind == "orm" else e[1] for e in encoded]
        logits = torch.cat(step_values(values, ends))
        labels = torch.tensor([t for s in samples for t in sample_targets(s, self.kind)], device=logits.device)
        return logits, labels

    def train(self, samples: Sequence[RMSample], epochs: Optional[int] = None) -> dict:
        """``epochs`` shuffled passes, one optimizer step per micro-batch; returns per-epoch mean losses."""
        if not samples:
            raise ValueError("reward-model training set is empty")
        epochs = epochs or self.cfg.epochs
        rng = random.Random(self.seed * 1000 + self.rounds)
        self.engine.train()
        t0, epoch_losses = time.time(), []
        order = list(range(len(samples)))
        for epoch in range(epochs):
            rng.shuffle(order)
            total, count = 0.0, 0
            for start in range(0, len(order), self.cfg.micro_batch_size):
                chunk = [samples[i] for i in order[start : start + self.cfg.micro_batch_size]]
                logits, labels = self._forward(chunk)
                loss = pointwise_loss(logits, labels)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"reward-model loss is {loss.item()} (round {self.rounds}, epoch {epoch})")
                self.engine.backward(loss)
                self.engine.step()
                self.optimizer_steps += 1
                total += float(loss.detach()) * labels.numel()
                count += labels.numel()
            epoch_losses.append(total / max(count, 1))
            log.info("reward model (%s) round %d epoch %d: loss %.4f", self.kind, self.rounds, epoch, epoch_losses[-1])
        self.rounds += 1
        return {"rm/loss_first_epoch": epoch_losses[0], "rm/loss_last_epoch": epoch_losses[-1],
                "rm/train_samples": len(samples), "rm/optimizer_steps": self.optimizer_steps,
                "time/rm_train_s": time.time() - t0}

    @torch.no_grad()
    def evaluate(self, samples: Sequence[RMSample]) -> dict:
        """Loss, accuracy (logit > 0 vs label) and AUC over every labelled position."""
        if not samples:
            return {"loss": float("nan"), "accuracy": float("nan"), "auc": float("nan"), "positions": 0,
                    "positive_frac": float("nan")}
        self.engine.eval()
        all_logits, all_labels = [], []
        for start in range(0, len(samples), self.cfg.micro_batch_size):
            logits, labels = self._forward(samples[start : start + self.cfg.micro_batch_size])
            all_logits.append(logits.float().cpu())
            all_labels.append(labels.float().cpu())
        self.engine.train()
        logits, labels = torch.cat(all_logits), torch.cat(all_labels)
        return {"loss": float(pointwise_loss(logits, labels)), "accuracy": binary_accuracy(logits, labels),
                "auc": ranking_accuracy(logits, labels), "positions": int(labels.numel()),
                "positive_frac": float((labels >= 0.5).float().mean())}

    def save_state(self, out_dir: str) -> None:
        """What continuing training needs beyond the served weights: DeepSpeed state (weights, AdamW
        moments, step counts) and the round counter that seeds each round's shuffle."""
        save_engine_state(self.engine, out_dir, {"rounds": self.rounds, "optimizer_steps": self.optimizer_steps})

    def load_state(self, in_dir: str) -> int:
        """Restore ``save_state``'s folder; returns the rounds trained so far."""
        client = load_engine_state(self.engine, in_dir, "reward-model trainer")
        self.rounds, self.optimizer_steps = int(client["rounds"]), int(client["optimizer_steps"])
        return self.rounds

    def save(self, out_dir: str) -> str:
        """The reward model as a Hugging Face folder (fp32 on CPU), written atomically."""
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.engine.module.state_dict().items()}
        return save_reward_model(self.engine.module, self.tokenizer, out_dir, state_dict=state)
