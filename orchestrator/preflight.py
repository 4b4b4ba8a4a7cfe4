"""Before any actor starts: the pre-flight checks of a run, and the Ray it runs on.

``preflight`` loads and checks everything that can fail cheaply (model, tokenizer, data, prompts,
held-out questions, the checkpoint to resume), each failure one line naming the culprit;
``check_resources`` compares what the roles ask for with the cluster; ``init_ray`` joins the cluster
of ``resources.address`` or starts a local Ray sized for the roles. Used by the driver and by
``grpo train --dry-run``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional

from orchestrator.config import TrainConfig

log = logging.getLogger(__name__)


class PreflightError(RuntimeError):
    """A check before any actor starts failed; the message names the field, file or model."""


@dataclasses.dataclass
class Preflight:
    """What pre-flight loaded: the tokenizer, the training questions and their prompts, the held-out
    questions of periodic evaluation and theirs, and the checkpoint a resume starts from."""
    tokenizer: object
    problems: list
    prompt_ids: list
    eval_problems: list
    eval_prompts: list
    resume_from: Optional[str]


def preflight(cfg: TrainConfig) -> Preflight:
    """Everything that can fail cheaply, before any actor starts: model, tokenizer, data, prompts,
    held-out questions, the checkpoint to resume. Each failure is one line naming the culprit."""
    from transformers import AutoTokenizer

    from orchestrator.data import encode_prompts, load_problems
    from orchestrator.model_prep import check_model_loadable

    path = cfg.model.path
    check_model_loadable(path, "model.path", cfg.model.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - one clear line for any loading failure
        raise PreflightError(f"model.path={path!r}: cannot load its tokenizer: {e}") from e
    problems = load_problems(cfg.data, "train", cfg.seed)
    if not problems:
        raise PreflightError(f"data: no training questions for task {cfg.data.task!r}")
    prompt_ids = encode_prompts(tokenizer, problems, cfg.data.system_prompt, cfg.data.max_prompt_tokens)
    eval_problems = load_problems(cfg.data, "eval", cfg.seed)[: cfg.eval.num_questions] if cfg.eval.every_steps else []
    if cfg.eval.every_steps and not eval_problems:
        raise PreflightError("eval.every_steps is set but there are no held-out questions (data.eval_file)")
    eval_prompts = encode_prompts(tokenizer, eval_problems, cfg.data.system_prompt, cfg.data.max_prompt_tokens)
    if cfg.resources.check_memory:
        check_memory(cfg, max((len(ids) for ids in prompt_ids), default=cfg.data.max_prompt_tokens))
    resume_from = None
    if cfg.output.resume:
        from orchestrator.checkpoint import find_checkpoint, list_checkpoints, read_state

        if cfg.output.resume != "if_exists" or list_checkpoints(cfg.output.dir):
            resume_from = find_checkpoint(cfg.output.dir, "auto" if cfg.output.resume == "if_exists" else cfg.output.resume)
            ranks = int(read_state(resume_from).get("learner_ranks", 1))  # DeepSpeed's shards are per rank
            if ranks != cfg.learner.num_ranks:
                raise PreflightError(f"resume from {resume_from}: it was trained with learner.num_ranks={ranks}, this "
                                     f"run has {cfg.learner.num_ranks}: resume with learner.num_ranks={ranks}")
    return Preflight(tokenizer, problems, prompt_ids, eval_problems, eval_prompts, resume_from)


def check_resources(cfg: TrainConfig) -> None:
    """The cluster holds every role's CPUs, GPUs and custom resources (one line naming what is short)."""
    import ray

    from orchestrator.placement import check_cluster, role_demands

    if cfg.resources.check_cluster:
        check_cluster(role_demands(cfg), ray.cluster_resources())


def init_ray(cfg: TrainConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [_repo_root(), os.environ.get("PYTHONPATH")]))}}
    if cfg.resources.address:
        ray.init(address=cfg.resources.address, runtime_env=env, log_to_driver=True)
        return
    from orchestrator.placement import local_ray_resources

    local = local_ray_resources(cfg)
    custom = {k: v for k, v in local.items() if k not in ("CPU", "GPU")}
    context = ray.init(num_cpus=local["CPU"], resources=custom or None, include_dashboard=cfg.logging.dashboard,
                       runtime_env=env, log_to_driver=True)
    if cfg.logging.dashboard and getattr(context, "dashboard_url", None):
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_memory(cfg, prompt_len: int) -> dict:
    """The memory plan at the longest real prompt (orchestrator.memory_plan); PreflightError when a role cannot fit."""
    import psutil

    from orchestrator.memory_plan import PlanError, check_plan, load_shape, make_plan

    try:
        shape = load_shape(cfg.model.path, cfg.model.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - the tokenizer loaded; a model transformers cannot build on "meta" is not refused
        log.warning("memory plan skipped: the shape of model.path=%r is unknown (%s)", cfg.model.path, str(e).splitlines()[0])
        return {}
    plan = make_plan(cfg, shape, prompt_len)
    try:
        check_plan(plan, host_ram_gb=psutil.virtual_memory().total / 2**30 if cfg.resources.address is None else None)
    except PlanError as e:
        raise PreflightError(str(e)) from None
    return plan
