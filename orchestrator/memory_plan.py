"""``grpo plan``: per-device memory of each role, from the model's shape and the config; pre-flight refuses a
config whose learner or engines cannot fit.

Estimates, per device (GiB = 2**30 bytes):

- **learner rank**: weights, gradients and AdamW states (mixed precision: 2 + 2 + 12 bytes per parameter;
  fp32: 4 + 4 + 8), divided by the ranks as the ZeRO stage partitions them (1: optimizer states, 2: and
  gradients, 3: and weights); activations of one micro-batch at full length (Korthikanti et al. 2022:
  34 x s x b x h bytes per layer at 16 bits, plus 5 x heads x s^2 x b for eager attention; with gradient
  checkpointing, each layer's input plus one layer recomputed); logits (b x s x vocab, kept for the
  backward, and their gradient) plus one row's fp32 log-softmax; the reference model (a full copy on every
  rank: it is not sharded); the process's runtime (``RUNTIME_BYTES``).
- **rollout engine**: weights / tensor_parallel_size, and the KV cache that one group needs at full
  length (G x (prompt + new tokens) tokens); the KV cache of every group the engine holds at once is
  reported too (vLLM queues what does not fit, so it costs speed, not a failure).

Not counted: ZeRO's communication buckets (0.6 GiB more than the plan for 2 ranks of ZeRO-2 with the tiny
model on CPU, docs/benchmarks.md) and allocator fragmentation; leave headroom.

Capacities: a GPU role has ``resources.gpu_memory_gb`` (unset: the local GPU's memory, else 80 GiB); an
engine uses ``rollout.gpu_memory_utilization`` of it. Roles on CPU share the host: on a local Ray their sum
is checked against this machine's RAM.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger(__name__)

GIB = 2**30
RUNTIME_BYTES = 1.0 * GIB
"""A learner process's own memory besides the model: Python, torch, DeepSpeed and their buffers (on CPU, peak
RSS minus the rest of the plan was 1.0 GiB for one rank, docs/benchmarks.md; on a GPU, the CUDA context)."""
DEFAULT_GPU_GB = 80.0
"""The capacity assumed for a GPU that this machine cannot see (an 80 GB A100/H100)."""


class PlanError(ValueError):
    """A role cannot fit its device; the message names the role and the shortfall."""


@dataclass(frozen=True)
class ModelShape:
    params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, config) -> "ModelShape":
        """From a transformers config; the parameter count from the model built on the meta device (no memory)."""
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        params = sum(p.numel() for p in model.parameters())  # tied weights once
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(params=params, layers=config.num_hidden_layers, hidden=config.hidden_size, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
                   vocab=config.vocab_size)


SHAPES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "shapes")
"""Architectures (a Hugging Face config.json) of the shipped configs' hub models, for planning offline."""


def shipped_shape_file(path: str) -> str:
    return os.path.join(SHAPES_DIR, path.strip("/").replace("/", "--") + ".json")


def load_shape(path: str, trust_remote_code: bool = False) -> ModelShape:
    """The shape of ``model.path`` (a folder or hub name); a hub model that cannot be reached falls back to
    its shipped architecture in configs/shapes/, with a warning."""
    from transformers import AutoConfig, PretrainedConfig

    try:
        return ModelShape.of(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))
    except (OSError, ValueError):
        shipped = shipped_shape_file(path)
        if os.path.isdir(path) or not os.path.exists(shipped):
            raise
        log.warning("model.path=%r cannot be read here: planning with its shipped architecture %s", path, shipped)
        config_dict, _ = PretrainedConfig.get_config_dict(shipped)
        from transformers import CONFIG_MAPPING

        return ModelShape.of(CONFIG_MAPPING[config_dict["model_type"]].from_dict(config_dict))


def _bytes(dtype: str, on_gpu: bool) -> int:
    return 4 if dtype == "float32" or (dtype == "auto" and not on_gpu) else 2


def learner_rank_bytes(shape: ModelShape, cfg, max_len: int) -> dict[str, float]:
    """Bytes of one learner rank, by part."""
    lc = cfg.learner
    on_gpu = lc.num_gpus > 0
    width = _bytes(cfg.model.dtype, on_gpu)
    n, p = lc.num_ranks, shape.params
    stage = lc.zero_stage if lc.zero_stage is not None else (0 if n == 1 else 2)
    weights, grads, optimizer = (2 * p, 2 * p, 12 * p) if width == 2 else (4 * p, 4 * p, 8 * p)
    optimizer /= n if stage >= 1 else 1
    grads /= n if stage >= 2 else 1
    weights /= n if stage >= 3 else 1
    b, s, h = lc.micro_batch_size, max_len, shape.hidden
    scale = width / 2
    full_layer = s * b * h * 34 * scale + (5 * shape.heads * s * s * b * scale if lc.attn_implementation == "eager" else 0)
    if lc.gradient_checkpointing:
        activations = shape.layers * s * b * h * width + full_layer
    else:
        activations = shape.layers * full_layer
    logits = 2 * b * s * shape.vocab * width + s * shape.vocab * 4
    return {"weights": weights, "gradients": grads, "optimizer": optimizer, "activations": activations,
            "logits": logits, "reference": p * width, "runtime": RUNTIME_BYTES}


def engine_bytes(shape: ModelShape, cfg, prompt_len: int) -> dict[str, float]:
    """Bytes of one rollout engine (per GPU of its tensor-parallel group), by part."""
    rc = cfg.rollout
    on_gpu = rc.num_gpus_per_worker > 0
    width = _bytes(rc.dtype, on_gpu)
    tp = max(1, rc.tensor_parallel_size)
    per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * width / tp
    length = prompt_len + rc.max_new_tokens
    groups_at_once = math.ceil(cfg.data.questions_per_step / max(1, rc.num_workers))
    return {"weights": shape.params * width / tp, "kv_cache_group": rc.group_size * length * per_token,
            "kv_cache_all_groups": groups_at_once * rc.group_size * length * per_token}


def gpu_capacity_gb(cfg) -> float:
    if cfg.resources.gpu_memory_gb:
        return float(cfg.resources.gpu_memory_gb)
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / GIB
    except Exception:  # noqa: BLE001 - no usable CUDA: the default
        pass
    return DEFAULT_GPU_GB


def make_plan(cfg, shape: ModelShape, prompt_len: Optional[int] = None) -> dict:
    """The plan as a JSON-able dict: per role, device, count, GiB per part, need, capacity, fits."""
    prompt_len = prompt_len or cfg.data.max_prompt_tokens
    max_len = prompt_len + cfg.rollout.max_new_tokens
    gpu_gb = gpu_capacity_gb(cfg)
    learner = learner_rank_bytes(shape, cfg, max_len)
    engine = engine_bytes(shape, cfg, prompt_len)
    lc, rc = cfg.learner, cfg.rollout
    roles = {
        "learner": {"device": "gpu" if lc.num_gpus > 0 else "cpu", "count": lc.num_ranks,
                    "parts_gb": {k: v / GIB for k, v in learner.items()}, "need_gb": sum(learner.values()) / GIB},
        "rollout": {"device": "gpu" if rc.num_gpus_per_worker > 0 else "cpu",
                    "count": rc.num_workers * max(1, rc.tensor_parallel_size),
                    "parts_gb": {k: v / GIB for k, v in engine.items()}},
    }
    r = roles["rollout"]
    if r["device"] == "gpu":
        r["need_gb"] = (engine["weights"] + engine["kv_cache_group"]) / GIB
        r["capacity_gb"] = gpu_gb * rc.gpu_memory_utilization
    else:  # the KV cache is the fixed rollout.kv_cache_gb (1 GiB by default)
        kv_gb = rc.kv_cache_gb if rc.kv_cache_gb is not None else 1.0
        r["need_gb"] = engine["weights"] / GIB + kv_gb
        r["kv_cache_gb"] = kv_gb
    if roles["learner"]["device"] == "gpu":
        roles["learner"]["capacity_gb"] = gpu_gb
    for role in roles.values():
        role["fits"] = role["need_gb"] <= role.get("capacity_gb", float("inf"))
    return {"model_params": shape.params, "sequence_tokens": max_len, "gpu_memory_gb": gpu_gb, "roles": roles}


def check_plan(plan: dict, host_ram_gb: Optional[float] = None) -> None:
    """Raise PlanError (one line) naming the first role that cannot fit, and by how much. ``host_ram_gb``:
    also check the CPU roles together against it (a local Ray: every role on this machine)."""
    for name, role in plan["roles"].items():
        if not role["fits"]:
            what = "a learner rank" if name == "learner" else "a rollout engine"
            raise PlanError(f"memory plan: {what} needs {role['need_gb']:.1f} GiB per GPU, which has "
                            f"{role['capacity_gb']:.1f} GiB: short by {role['need_gb'] - role['capacity_gb']:.1f} GiB "
                            f"({_largest(role)}; see `grpo plan`)")
        if name == "rollout" and role["device"] == "cpu" and role["parts_gb"]["kv_cache_group"] > role["kv_cache_gb"]:
            raise PlanError(f"memory plan: one group's KV cache needs {role['parts_gb']['kv_cache_group']:.2f} GiB, "
                            f"rollout.kv_cache_gb={role['kv_cache_gb']:g}: short by "
                            f"{role['parts_gb']['kv_cache_group'] - role['kv_cache_gb']:.2f} GiB")
    cpu = sum(r["need_gb"] * r["count"] for r in plan["roles"].values() if r["device"] == "cpu")
    if host_ram_gb is not None and cpu > host_ram_gb:
        raise PlanError(f"memory plan: the roles on CPU need {cpu:.1f} GiB together, this machine has "
                        f"{host_ram_gb:.1f} GiB: short by {cpu - host_ram_gb:.1f} GiB (see `grpo plan`)")


def _largest(role: dict) -> str:
    parts = sorted(role["parts_gb"].items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{k} {v:.1f}" for k, v in parts)


def describe(plan: dict) -> list[str]:
    """The plan as lines for a terminal."""
    lines = [f"model: {plan['model_params'] / 1e9:.2f}B parameters, sequences up to {plan['sequence_tokens']} tokens"]
    for name, role in plan["roles"].items():
        cap = f" of {role['capacity_gb']:.1f}" if "capacity_gb" in role else ""
        verdict = "fits" if role["fits"] else "DOES NOT FIT"
        lines.append(f"{name}: {role['count']} x {role['device']}, {role['need_gb']:.2f}{cap} GiB each: {verdict}")
        lines += [f"  {part:<20} {gb:8.2f} GiB" for part, gb in role["parts_gb"].items()]
    return lines
