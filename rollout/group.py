"""A group of vLLM engine actors: start them, shard a step's questions across them, sync weights.

Every remote call has a deadline; a late or dead engine is named in the error.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Sequence

import ray

from orchestrator.remote import gather, shard_bounds
from orchestrator.types import Episode, Problem
from rollout.engine import RolloutEngine, SamplingSpec

log = logging.getLogger(__name__)


class RolloutError(RuntimeError):
    """An engine failed or missed its deadline; the message names it."""


def engine_dtype(model_dtype: str, on_gpu: bool) -> str:
    """Engines run bf16 on GPU; on CPU fp32 (bf16 decoding is 4x slower without AVX512-BF16)."""
    if model_dtype != "auto":
        return model_dtype
    return "bfloat16" if on_gpu else "float32"


def _wait(refs: list, names: list[str], timeout_s: float, what: str) -> list:
    return gather(list(zip(names, refs)), timeout_s, what, RolloutError)


class RolloutGroup:
    """``num_workers`` RolloutEngine actors built from the config."""

    def __init__(self, cfg, max_model_len: int, weight_transfer_backend: str | None = None):
        rc = cfg.rollout
        self.cfg = cfg
        self.on_gpu = rc.num_gpus_per_worker > 0
        self.dtype = engine_dtype(cfg.model.dtype, self.on_gpu)
        self.timeout_s = cfg.resources.timeout_s
        self.names = [f"rollout-engine-{i}" for i in range(rc.num_workers)]
        actor_cls = ray.remote(RolloutEngine)
        env = {"VLLM_CONFIGURE_LOGGING": os.environ.get("VLLM_CONFIGURE_LOGGING", "1")}
        self.engines = [
            actor_cls.options(
                name=None, num_cpus=rc.num_cpus_per_worker, num_gpus=rc.num_gpus_per_worker,
                runtime_env={"env_vars": env},
            ).remote(
                os.path.abspath(cfg.model.path) if os.path.isdir(cfg.model.path) else cfg.model.path,
                dtype=self.dtype, max_model_len=max_model_len,
                gpu_memory_utilization=rc.gpu_memory_utilization,
                tensor_parallel_size=rc.tensor_parallel_size if self.on_gpu else 1,
                enforce_eager=rc.enforce_eager, enable_prefix_caching=rc.enable_prefix_caching,
                seed=cfg.seed + i, trust_remote_code=cfg.model.trust_remote_code,
                weight_transfer_backend=weight_transfer_backend, name=name,
            )
            for i, name in enumerate(self.names)
        ]

    def ready(self) -> None:
        _wait([e.ping.remote() for e in self.engines], self.names, self.timeout_s, "starting the vLLM engines")

    def generate(self, problems: Sequence[Problem], prompt_ids: Sequence[Sequence[int]], n: int | None = None,
                 max_new_tokens: int | None = None) -> tuple[list[Episode], dict]:
        """G samples (or ``n``) for each problem; group i is problems[i]; questions sharded across engines."""
        rc = self.cfg.rollout
        spec = SamplingSpec(n=n or rc.group_size, max_new_tokens=max_new_tokens or rc.max_new_tokens,
                            temperature=rc.temperature, top_p=rc.top_p)
        requests = [(i, p, tuple(ids)) for i, (p, ids) in enumerate(zip(problems, prompt_ids))]
        parts = [requests[a:b] for a, b in shard_bounds(len(requests), len(self.engines))]
        used = [(e, n, part) for e, n, part in zip(self.engines, self.names, parts) if part]
        t0 = time.time()
        results = _wait([e.generate.remote(part, spec) for e, _, part in used], [n for _, n, _ in used], self.timeout_s, "generation")
        episodes: list[Episode] = []
        stats = {"time/generate_s": time.time() - t0}
        for (_, name, _), (eps, st) in zip(used, results):
            episodes.extend(eps)
            stats[f"rollout/{name}/tokens_per_s"] = st["tokens"] / max(st["seconds"], 1e-9)
        return episodes, stats

    def generate_text(self, prompt_ids: Sequence[Sequence[int]], spec: SamplingSpec) -> list[list[str]]:
        """Texts only (evaluation): ``spec.n`` completions per prompt, prompts sharded across engines."""
        parts = [list(prompt_ids[a:b]) for a, b in shard_bounds(len(prompt_ids), len(self.engines))]
        used = [(e, name, part) for e, name, part in zip(self.engines, self.names, parts) if part]
        results = _wait([e.generate_text.remote(part, spec) for e, _, part in used], [name for _, name, _ in used],
                        self.timeout_s, "evaluation")
        return [texts for shard in results for texts in shard]

    def sync_weights_blob(self, blob_ref, version: int) -> float:
        """File path: every engine reloads the blob behind ``blob_ref`` (a Ray object reference)."""
        t0 = time.time()
        _wait([e.load_weights_blob.remote(blob_ref, version) for e in self.engines], self.names, self.timeout_s, "weight sync")
        return time.time() - t0

    def policy_versions(self) -> list[int]:
        return _wait([e.get_policy_version.remote() for e in self.engines], self.names, self.timeout_s, "version check")

    def fingerprints(self) -> list[float]:
        return _wait([e.weights_fingerprint.remote() for e in self.engines], self.names, self.timeout_s, "fingerprint")

    def shutdown(self) -> None:
        for e in self.engines:
            ray.kill(e)
