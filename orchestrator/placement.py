"""Per-role resources: what each role asks of the cluster, the pre-flight check, and placement groups.

Three roles scale independently: rollout engines (``rollout.*``), learner ranks (``learner.*`` and
the reward-model learners, ``reward_model.*``) and reward workers (``reward.*``). Each has its own
CPUs, GPUs and custom resources (e.g. ``rollout.resources={rollout_node: 1}`` pins engines to the
cluster's rollout worker group). Every actor is placed through its own placement group, so an engine
can be added or replaced without touching the others, and a group that cannot be placed fails with
the role and the missing resources instead of waiting forever.
"""
from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Mapping, Optional


class PlacementError(RuntimeError):
    """The cluster cannot hold what a role asks for; the message names the role and the shortfall."""


def engine_bundle(cfg) -> dict:
    """One rollout engine: its CPUs, all its tensor-parallel GPUs (one node; vLLM's multiprocessing
    executor runs the TP workers inside the engine actor's GPU set) and its custom resources."""
    rc = cfg.rollout
    return _clean({"CPU": float(rc.num_cpus_per_worker), "GPU": float(rc.num_gpus_per_worker),
                   **{k: float(v) for k, v in rc.resources.items()}})


def learner_bundle(cfg, rank: int = 0) -> dict:
    """The bundle of learner rank ``rank``: learner.resources, plus learner.rank0_resources for rank 0."""
    lc = cfg.learner
    custom = {k: float(v) for k, v in lc.resources.items()}
    if rank == 0:
        for k, v in lc.rank0_resources.items():
            custom[k] = custom.get(k, 0.0) + float(v)
    return _clean({"CPU": float(lc.num_cpus), "GPU": float(lc.num_gpus), **custom})


def reward_model_bundle(cfg) -> dict:
    rm = cfg.reward_model
    return _clean({"CPU": float(rm.num_cpus), "GPU": float(rm.num_gpus),
                   **{k: float(v) for k, v in cfg.learner.resources.items()}})


def reward_bundle(cfg) -> dict:
    rc = cfg.reward
    return _clean({"CPU": float(rc.num_cpus_per_worker), **{k: float(v) for k, v in rc.resources.items()}})


def _clean(bundle: dict) -> dict:
    return {k: v for k, v in bundle.items() if v > 0}


def role_demands(cfg, num_engines: Optional[int] = None) -> dict[str, list[dict]]:
    """Every bundle each role needs at once: role -> list of bundles."""
    learned = int(cfg.reward.orm_weight > 0) + int(cfg.reward.prm_weight > 0)
    n = cfg.rollout.num_workers if num_engines is None else num_engines
    return {
        "rollout": [engine_bundle(cfg) for _ in range(n)],
        "learner": [learner_bundle(cfg, rank) for rank in range(cfg.learner.num_ranks)]
                   + [reward_model_bundle(cfg) for _ in range(learned)],
        "reward": [reward_bundle(cfg) for _ in range(cfg.reward.num_workers)],
    }


def totals(demands: Mapping[str, list[dict]]) -> dict[str, float]:
    """Each resource summed over every role's bundles."""
    need: dict[str, float] = defaultdict(float)
    for bundles in demands.values():
        for bundle in bundles:
            for key, amount in bundle.items():
                need[key] += amount
    return dict(need)


def local_ray_resources(cfg, gpus: Optional[int] = None) -> dict[str, float]:
    """What the local Ray that ``grpo train`` starts (no ``--address``) advertises: CPUs, the GPUs it
    detects (``gpus``, else CUDA's count) and every custom resource the roles ask for.

    Phases run one after another, so it may advertise more CPUs than the machine has
    (``resources.num_cpus`` sets the number)."""
    need = totals(role_demands(cfg))
    num_cpus = cfg.resources.num_cpus or max(os.cpu_count() or 1, int(need.get("CPU", 0.0) + 0.999))
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    custom = {k: v for k, v in need.items() if k not in ("CPU", "GPU")}
    return {"CPU": float(num_cpus), "GPU": float(gpus), **custom}


def check_cluster(demands: Mapping[str, list[dict]], available: Mapping[str, float]) -> None:
    """Raise PlacementError (one line) if the cluster's total resources cannot hold every role's bundles.

    ``available``: ``ray.cluster_resources()``. This is a necessary condition (totals, not per-node
    packing); the placement groups then wait at most ``resources.placement_timeout_s``.
    """
    need = totals(demands)
    by_role: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for role, bundles in demands.items():
        for bundle in bundles:
            for key, amount in bundle.items():
                by_role[key][role] += amount
    short = []
    for key in sorted(need):
        have = float(available.get(key, 0.0))
        if need[key] > have + 1e-9:
            roles = ", ".join(f"{role} {amount:g}" for role, amount in sorted(by_role[key].items()))
            short.append(f"{key}: need {need[key]:g} ({roles}), cluster has {have:g}")
    if short:
        raise PlacementError("the cluster lacks resources: " + "; ".join(short)
                             + " (lower the role's counts, or add nodes with these resources)")


def place(name: str, bundles: list[dict], timeout_s: float, strategy: str = "STRICT_PACK"):
    """Create a placement group for one actor and wait until it is placed; PlacementError names it."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group(bundles, strategy=strategy, name=f"grpo-{name}-{time.time_ns()}")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise PlacementError(f"{name}: could not place {bundles} within {timeout_s:.0f}s "
                             f"(cluster has {ray.available_resources()} free)")
    return pg


def scheduling(pg, bundle_index: int = 0) -> dict:
    """Actor options that put an actor (and, for vLLM's Ray executor, its workers) in bundle ``bundle_index`` of ``pg``."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=bundle_index, placement_group_capture_child_tasks=True)}


def actor_options(bundle: dict) -> dict:
    """num_cpus / num_gpus / resources of the actor itself, matching bundle 0 of its group."""
    custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
    return {"num_cpus": bundle.get("CPU", 0.0), "num_gpus": bundle.get("GPU", 0.0), "resources": custom}


def release(pg) -> None:
    from ray.util.placement_group import remove_placement_group

    if pg is None:
        return
    try:
        remove_placement_group(pg)
    except Exception:  # noqa: BLE001 - already gone with its actor or the cluster
        pass
