"""``grpo train --dry-run``: pre-flight only, and what the run would start. No actor starts.

Runs the same checks as a real start, in the same order: the config (already validated by
``load_config``), the model's config and tokenizer, the training data and every prompt's length,
the held-out questions of periodic evaluation, the checkpoint to resume from, and the resources every
role asks for, against the Ray cluster of ``--address`` (connecting to it starts nothing) or against
what the local Ray would advertise on this machine. Returns the plan as a dict for stdout.
"""
from __future__ import annotations

import time

from orchestrator.config import TrainConfig


def dry_run(cfg: TrainConfig) -> dict:
    """Pre-flight the config; raise the first failure (one line), else return what would start."""
    from orchestrator.preflight import preflight
    from orchestrator.placement import check_cluster, local_ray_resources, role_demands, totals

    t0 = time.time()
    checked = preflight(cfg)
    demands = role_demands(cfg)
    if cfg.resources.address:
        import ray

        ray.init(address=cfg.resources.address, log_to_driver=False)
        try:
            available = ray.cluster_resources()
        finally:
            ray.shutdown()
        cluster = cfg.resources.address
    else:
        available = local_ray_resources(cfg)
        cluster = "local Ray on this machine (started by the run)"
    if cfg.resources.check_cluster:
        check_cluster(demands, available)
    questions_per_step = cfg.data.questions_per_step
    prompt_lengths = [len(ids) for ids in checked.prompt_ids]
    need = totals(demands)
    return {
        "status": "dry-run ok",
        "model": cfg.model.path,
        "task": cfg.data.task,
        "train_questions": len(checked.problems),
        "eval_questions": len(checked.eval_problems),
        "steps": cfg.total_steps,
        "samples_per_step": questions_per_step * cfg.rollout.group_size,
        "epochs": round(cfg.total_steps * questions_per_step / len(checked.problems), 3),
        "max_prompt_tokens": max(prompt_lengths),
        "max_sequence_tokens": max(prompt_lengths) + cfg.rollout.max_new_tokens,
        "actors": {role: bundles for role, bundles in demands.items()},
        "resources_needed": need,
        "cluster": cluster,
        "cluster_resources": {k: available.get(k, 0.0) for k in sorted(set(need) | {"CPU", "GPU"})},
        "output_dir": cfg.output.dir,
        "resume_from": checked.resume_from,
        "seconds": round(time.time() - t0, 1),
    }


def describe(plan: dict) -> list[str]:
    """Human-readable lines of the plan (for stderr)."""
    lines = [f"dry run: {plan['train_questions']} {plan['task']} questions, {plan['steps']} steps of "
             f"{plan['samples_per_step']} samples ({plan['epochs']} epochs), sequences up to "
             f"{plan['max_sequence_tokens']} tokens"]
    for role, bundles in plan["actors"].items():
        if bundles:
            kinds = sorted({tuple(sorted(b.items())) for b in bundles})
            per = "; ".join(", ".join(f"{k} {v:g}" for k, v in kind) or "no resources" for kind in kinds)
            lines.append(f"  would start {len(bundles)} {role} actor(s): {per}")
    lines.append(f"  on {plan['cluster']}: needs {plan['resources_needed']}, has {plan['cluster_resources']}")
    if plan["resume_from"]:
        lines.append(f"  would resume from {plan['resume_from']}")
    return lines
