"""Validation of a whole run's config (``TrainConfig.validate``): every error names the offending field.

Kept apart from the config tree (``orchestrator.config``) so the tree stays a readable list of fields;
this module needs no torch import.
"""
from __future__ import annotations

import os
from typing import Any

from orchestrator.metric_sinks import INSTALL_HINT, WANDB_MODES, missing_packages

TASKS = ("gsm8k", "math", "arithmetic")
# Names of the variants registered in learner.algorithm (kept here so validation needs no torch import;
# tests/orchestrator/test_config.py checks that both lists agree).
LOSS_AGGS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum")
KL_ESTIMATORS = ("k1", "k2", "k3")
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")


class ConfigError(ValueError):
    """A config value is missing, unknown or out of range; the message names the field."""


def validate(cfg) -> None:
    """Raise ConfigError naming the first bad field of the ``TrainConfig`` ``cfg``."""
    checks = [
        ("data.task", cfg.data.task in TASKS, f"must be one of {TASKS}"),
        ("data.train_file", cfg.data.task == "arithmetic" or bool(cfg.data.train_file), f"is required for task {cfg.data.task!r}"),
        ("data.questions_per_step", cfg.data.questions_per_step >= 1, "must be >= 1"),
        ("data.max_prompt_tokens", cfg.data.max_prompt_tokens >= 1, "must be >= 1"),
        ("data.arithmetic_digits", 1 <= cfg.data.arithmetic_digits <= 9, "must be in 1..9"),
        ("data.arithmetic_train_size", cfg.data.arithmetic_train_size >= 1, "must be >= 1"),
        ("data.arithmetic_eval_size", cfg.data.arithmetic_eval_size >= 0, "must be >= 0"),
        ("rollout.num_workers", cfg.rollout.num_workers >= 1, "must be >= 1"),
        ("rollout.group_size", cfg.rollout.group_size >= 2, "must be >= 2 (GRPO's baseline needs a group)"),
        ("rollout.max_new_tokens", cfg.rollout.max_new_tokens >= 1, "must be >= 1"),
        ("rollout.temperature", cfg.rollout.temperature > 0, "must be > 0"),
        ("rollout.top_p", 0 < cfg.rollout.top_p <= 1, "must be in (0, 1]"),
        ("rollout.tensor_parallel_size", cfg.rollout.tensor_parallel_size >= 1, "must be >= 1"),
        ("rollout.gpu_memory_utilization", 0 < cfg.rollout.gpu_memory_utilization < 1, "must be in (0, 1)"),
        ("rollout.kv_cache_gb", cfg.rollout.kv_cache_gb is None or cfg.rollout.kv_cache_gb > 0, "must be > 0"),
        ("reward.num_workers", cfg.reward.num_workers >= 1, "must be >= 1"),
        ("reward.timeout_s", cfg.reward.timeout_s > 0, "must be > 0"),
        ("reward.verifier_memory_mb", cfg.reward.verifier_memory_mb > 0, "must be > 0"),
        ("reward.rule_weight", cfg.reward.rule_weight >= 0, "must be >= 0"),
        ("reward.orm_weight", cfg.reward.orm_weight >= 0, "must be >= 0"),
        ("reward.prm_weight", cfg.reward.prm_weight >= 0, "must be >= 0"),
        ("reward.rule_weight", cfg.reward.rule_weight + cfg.reward.orm_weight + cfg.reward.prm_weight > 0,
         "and reward.orm_weight, reward.prm_weight: at least one must be > 0"),
        ("reward.prm_weight", cfg.reward.prm_weight == 0 or cfg.algorithm.supervision == "process",
         "needs algorithm.supervision='process' (a PRM scores steps)"),
        ("reward.model_batch_size", cfg.reward.model_batch_size >= 1, "must be >= 1"),
        ("reward.model_dtype", cfg.reward.model_dtype in ("auto", "float32", "bfloat16"),
         "must be 'auto', 'float32' or 'bfloat16'"),
        ("reward.overlap_samples", cfg.reward.overlap_samples >= 0, "must be >= 0"),
        ("reward_model.lr", cfg.reward_model.lr > 0, "must be > 0"),
        ("reward_model.epochs", cfg.reward_model.epochs >= 1, "must be >= 1"),
        ("reward_model.micro_batch_size", cfg.reward_model.micro_batch_size >= 1, "must be >= 1"),
        ("reward_model.train_last_layers", cfg.reward_model.train_last_layers >= 0, "must be >= 0"),
        ("reward_model.zero_stage", cfg.reward_model.zero_stage in (None, 0, 1, 2), "must be 0, 1, 2 or null (auto)"),
        ("reward_model.heldout_frac", 0 <= cfg.reward_model.heldout_frac < 1, "must be in [0, 1)"),
        ("reward_model.bootstrap_questions", cfg.reward_model.bootstrap_questions >= 1, "must be >= 1"),
        ("reward_model.prm_rollouts_per_step", cfg.reward_model.prm_rollouts_per_step >= 1, "must be >= 1"),
        ("reward_model.prm_label", cfg.reward_model.prm_label in ("hard", "soft"), "must be 'hard' or 'soft'"),
        ("reward_model.prm_max_prefixes", cfg.reward_model.prm_max_prefixes >= 0, "must be >= 0"),
        ("reward_model.labels_file", cfg.reward_model.labels_file is None or os.path.exists(cfg.reward_model.labels_file),
         "does not exist"),
        ("iterative.every_steps", cfg.iterative.every_steps >= 0, "must be >= 0"),
        ("iterative.every_steps", cfg.iterative.every_steps == 0 or cfg.reward.orm_weight + cfg.reward.prm_weight > 0,
         "needs a learned reward (reward.orm_weight or reward.prm_weight > 0) to retrain"),
        ("iterative.replay_ratio", 0 <= cfg.iterative.replay_ratio < 1, "must be in [0, 1)"),
        ("iterative.replay_max_samples", cfg.iterative.replay_max_samples >= 1, "must be >= 1"),
        ("algorithm.clip_eps", 0 < cfg.algorithm.clip_eps < 1, "must be in (0, 1)"),
        ("algorithm.kl_coef", cfg.algorithm.kl_coef >= 0, "must be >= 0"),
        ("algorithm.mu", cfg.algorithm.mu >= 1, "must be >= 1"),
        ("algorithm.adv_eps", cfg.algorithm.adv_eps > 0, "must be > 0"),
        ("algorithm.supervision", cfg.algorithm.supervision in ("outcome", "process"), "must be 'outcome' or 'process'"),
        ("algorithm.step_separator", bool(cfg.algorithm.step_separator), "must not be empty"),
        ("algorithm.loss_agg", cfg.algorithm.loss_agg in LOSS_AGGS, f"must be one of {LOSS_AGGS}"),
        ("algorithm.kl_estimator", cfg.algorithm.kl_estimator in KL_ESTIMATORS, f"must be one of {KL_ESTIMATORS}"),
        ("algorithm.kl_placement", cfg.algorithm.kl_placement in ("loss", "reward"), "must be 'loss' or 'reward'"),
        ("algorithm.kl_placement", cfg.algorithm.kl_placement == "loss" or cfg.algorithm.supervision == "outcome",
         "'reward' works with outcome supervision only"),
        ("algorithm.old_logprobs", cfg.algorithm.old_logprobs in ("learner", "sampler"), "must be 'learner' or 'sampler'"),
        ("algorithm.off_policy_lag", cfg.algorithm.off_policy_lag in (0, 1), "must be 0 or 1"),
        ("algorithm.off_policy_lag", cfg.algorithm.off_policy_lag == 0 or cfg.algorithm.old_logprobs == "sampler",
         "needs algorithm.old_logprobs='sampler' (the ratio must be taken against the policy that sampled)"),
        ("learner.lr", cfg.learner.lr > 0, "must be > 0"),
        ("learner.zero_stage", cfg.learner.zero_stage in (None, 0, 1, 2, 3), "must be 0, 1, 2, 3 or null (auto)"),
        ("learner.micro_batch_size", cfg.learner.micro_batch_size >= 1, "must be >= 1"),
        ("learner.num_ranks", isinstance(cfg.learner.num_ranks, int) and cfg.learner.num_ranks >= 1, "must be an integer >= 1"),
        ("learner.placement_strategy", cfg.learner.placement_strategy in PLACEMENT_STRATEGIES,
         f"must be one of {PLACEMENT_STRATEGIES}"),
        ("learner.adam_betas", len(cfg.learner.adam_betas) == 2 and all(0 <= b < 1 for b in cfg.learner.adam_betas), "must be two numbers in [0, 1)"),
        ("learner.grad_clip", cfg.learner.grad_clip >= 0, "must be >= 0"),
        ("learner.attn_implementation", cfg.learner.attn_implementation in ATTN_IMPLEMENTATIONS,
         f"must be one of {ATTN_IMPLEMENTATIONS}"),
        ("learner.packed_sequences", not (cfg.learner.packed_sequences and cfg.learner.attn_implementation == "flash_attention_2"),
         "needs attention that takes a 4-D mask: learner.attn_implementation 'auto', 'eager' or 'sdpa'"),
        ("model.dtype", cfg.model.dtype in ("auto", "float32", "bfloat16"), "must be 'auto', 'float32' or 'bfloat16'"),
        ("rollout.dtype", cfg.rollout.dtype in ("auto", "float32", "bfloat16"), "must be 'auto', 'float32' or 'bfloat16'"),
        ("resources.weight_sync_bucket_mb", cfg.resources.weight_sync_bucket_mb >= 1, "must be >= 1"),
        ("resources.weight_sync", cfg.resources.weight_sync in ("auto", "shm", "file", "nccl"),
         "must be 'auto', 'shm', 'file' or 'nccl'"),
        ("resources.timeout_s", cfg.resources.timeout_s > 0, "must be > 0"),
        ("resources.stall_timeout_s", cfg.resources.stall_timeout_s >= 0, "must be >= 0 (0 = off)"),
        ("eval.every_steps", cfg.eval.every_steps >= 0, "must be >= 0"),
        ("eval.num_questions", cfg.eval.num_questions >= 1, "must be >= 1"),
        ("eval.samples", cfg.eval.samples >= 0, "must be >= 0"),
        ("eval.temperature", cfg.eval.temperature > 0, "must be > 0"),
        ("eval.every_steps", cfg.eval.every_steps == 0 or cfg.data.task == "arithmetic" or bool(cfg.data.eval_file),
         "needs held-out questions: set data.eval_file"),
        ("logging.log_every", cfg.logging.log_every >= 1, "must be >= 1"),
        ("logging.wandb_mode", cfg.logging.wandb_mode in WANDB_MODES, f"must be one of {WANDB_MODES}"),
        ("logging.wandb_project", cfg.logging.wandb_project is None or bool(cfg.logging.wandb_project.strip()),
         "must name a project (or be null)"),
        ("rollout.max_restarts", cfg.rollout.max_restarts >= 0, "must be >= 0"),
        ("rollout.cpu_reserved_cores", cfg.rollout.cpu_reserved_cores >= 0, "must be >= 0"),
        ("reward.max_restarts", cfg.reward.max_restarts >= 0, "must be >= 0"),
        ("resources.placement_timeout_s", cfg.resources.placement_timeout_s > 0, "must be > 0"),
        ("output.checkpoint_every", cfg.output.checkpoint_every >= 0, "must be >= 0"),
        ("output.keep_last", cfg.output.keep_last >= 1, "must be >= 1"),
        ("total_steps", cfg.total_steps >= 1, "must be >= 1"),
    ]
    for name, ok, why in checks:
        if not ok:
            raise ConfigError(f"config field {name}={_get(cfg, name)!r} {why}")
    check_learner_split(cfg.data.questions_per_step, cfg.rollout.group_size, cfg.learner.num_ranks,
                        cfg.learner.micro_batch_size)
    for role, field_name in (("rollout", "resources"), ("reward", "resources"), ("learner", "resources"),
                             ("learner", "rank0_resources")):
        for key, amount in getattr(getattr(cfg, role), field_name).items():
            if key in ("CPU", "GPU", "memory") or not isinstance(amount, (int, float)) or amount <= 0:
                raise ConfigError(f"config field {role}.{field_name} has {key}={amount!r}: custom resources need a "
                                  "positive amount (CPUs and GPUs have their own fields)")
    for name, package in missing_packages(cfg.logging)[:1]:
        raise ConfigError(f"config field logging.{name}={_get(cfg.logging, name)!r} needs the {package!r} package, "
                          f"which is not installed: {INSTALL_HINT}")
    for name in ("orm_path", "prm_path"):
        path = getattr(cfg.reward, name)
        if path and path.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(path)):
            raise ConfigError(f"config field reward.{name}={path!r}: no such reward-model folder")
    for name in ("train_file", "eval_file"):
        path = getattr(cfg.data, name)
        if path and cfg.data.task != "arithmetic" and _looks_like_path(path) and not os.path.exists(path):
            from orchestrator.data import missing_data_hint

            raise ConfigError(f"config field data.{name}={path!r}: no such file" + missing_data_hint(path))


def _looks_like_path(s: str) -> bool:
    return s.endswith((".jsonl", ".json")) or s.startswith((".", "/", "~"))


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def check_learner_split(questions: int, group_size: int, ranks: int, micro_batch: int) -> None:
    """Each learner rank trains whole groups, the same number on every rank, in whole micro-batches."""
    if questions % ranks:
        raise ConfigError(f"config field learner.num_ranks={ranks} must divide data.questions_per_step={questions}: "
                          "each rank trains whole groups, the same number on every rank")
    per_rank = questions // ranks * group_size
    if per_rank % micro_batch:
        where = "the step's batch" if ranks == 1 else "each rank's share of the step's batch"
        raise ConfigError(
            f"config field learner.micro_batch_size={micro_batch} must divide {where} of "
            f"data.questions_per_step*rollout.group_size{'/learner.num_ranks' if ranks > 1 else ''}={per_rank} sequences"
        )
