"""The training driver: DeepSeekMath's Algorithm 1 over Ray actors.

    for step in 1..total_steps:
        sample a batch of questions                          (QuestionSampler)
        sample G outputs per question with pi_old            (RolloutGroup -> vLLM engines)
        score every output (and each step, if process)       (RewardPool -> verifiers, ORM, PRM; reward.compose)
        group-relative advantages, mu GRPO updates           (LearnerWorker -> learner.algorithm, DeepSpeed)
        pi_old <- pi_theta on every engine                   (weight sync)
        every K steps: retrain r_phi with 10% replay,        (orchestrator.iterative, Iterative RL)
                       pi_ref <- pi_theta
"""
from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
from typing import Callable, Optional, Sequence

import yaml

from orchestrator.config import TrainConfig
from orchestrator.metrics import MetricsLogger
from orchestrator.preflight import PreflightError, check_resources, init_ray, preflight
from orchestrator.types import Batch, Episode, TrainingError

log = logging.getLogger(__name__)


class RunStopped(TrainingError):
    """A stop signal ended the run; what was trained is checkpointed. ``exit_code``: 128 + signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def step_metrics(episodes: list[Episode], group_size: int) -> dict:
    rewards = [e.reward for e in episodes]
    lengths = [len(e.response_token_ids) for e in episodes]
    groups = [rewards[i : i + group_size] for i in range(0, len(rewards), group_size)]
    return {
        "reward/mean": statistics.fmean(rewards),
        "reward/std": statistics.pstdev(rewards),
        "reward/accuracy": statistics.fmean(float(e.correct) for e in episodes),
        "reward/zero_std_groups": sum(1 for g in groups if max(g) == min(g)) / len(groups),
        "response/length_mean": statistics.fmean(lengths),
        "response/length_max": max(lengths),
        "response/truncated_frac": statistics.fmean(float(e.finish_reason == "length") for e in episodes),
    }


def reference_overlap(cfg: TrainConfig) -> bool:
    """Whether the learner computes reference logprobs of streamed chunks during generation
    (``learner.reference_overlap``; unset: when it has a GPU of its own). Never without a KL term."""
    overlap = cfg.learner.reference_overlap
    return cfg.algorithm.kl_coef > 0 and (overlap if overlap is not None else cfg.learner.num_gpus > 0)


class Trainer:
    """Builds the actors, runs the loop, checkpoints, resumes, saves the result."""

    def __init__(self, cfg: TrainConfig):
        from orchestrator.checkpoint import list_checkpoints
        from orchestrator.run_lock import RunLockError, acquire_run_lock

        if cfg.output.resume == "if_exists":  # a retried job continues; a first attempt starts fresh
            cfg.output.resume = "auto" if list_checkpoints(cfg.output.dir) else None
        self.cfg = cfg
        self.out_dir = cfg.output.dir
        self.start_step = 1
        self._trained = None  # (step, episodes, metrics) of a step trained but not yet recorded
        from orchestrator.stop_signals import StopSignals

        self.stop = StopSignals()
        self.policy_version = 0
        self.prefetched = None  # (episodes, generation stats) of the next step, under off_policy_lag=1
        try:  # one run per folder, until shutdown; the run id names the learner's shared-memory weight file
            self.run_lock = acquire_run_lock(self.out_dir)
        except RunLockError as e:
            raise PreflightError(str(e)) from None

    def setup(self) -> None:
        from orchestrator.data import QuestionSampler
        from orchestrator.iterative import RewardModelRounds
        from orchestrator.learner_group import LearnerGroup
        from reward.pool import RewardPool
        from rollout.group import RolloutGroup

        cfg = self.cfg
        t0 = time.time()
        checked = preflight(cfg)
        with open(os.path.join(self.out_dir, "config.yaml"), "w") as f:  # after pre-flight: a refused start keeps the run's
            yaml.safe_dump({**dataclasses.asdict(cfg), "output": {**dataclasses.asdict(cfg.output), "resume": None}}, f,
                           sort_keys=False)
        self.tokenizer, problems, prompt_ids = checked.tokenizer, checked.problems, checked.prompt_ids
        self.problems = problems
        self.prompt_ids = {p.uid: ids for p, ids in zip(problems, prompt_ids)}
        self.sampler = QuestionSampler(problems, cfg.data.questions_per_step, cfg.seed, cfg.data.shuffle)
        self._sampler_before = self.sampler.state_dict()
        print(f"preflight ok: {len(problems)} questions, model {cfg.model.path} ({time.time() - t0:.1f}s)", flush=True)
        init_ray(cfg)
        self.stop.install()  # ray.init took SIGTERM over (a handler that exits, then Ray's C++ one)
        check_resources(cfg)
        max_len = max(len(ids) for ids in prompt_ids) + cfg.rollout.max_new_tokens
        self.sync_mode = cfg.resources.weight_sync
        self.sync_parts: dict[str, float] = {}
        self.sync_other_node = 0
        if self.sync_mode == "auto":
            self.sync_mode = "nccl" if cfg.rollout.num_gpus_per_worker > 0 and cfg.learner.num_gpus > 0 else "shm"
        print("starting actors: vLLM engines, reward workers, DeepSpeed learner ...", flush=True)
        self.rollout = RolloutGroup(cfg, max_model_len=max_len, weight_transfer_backend="nccl" if self.sync_mode == "nccl" else None,
                                    shm_record_dir=self.out_dir)
        self.rewards = RewardPool.from_config(cfg)
        batch_size = cfg.data.questions_per_step * cfg.rollout.group_size
        self.learner = LearnerGroup(cfg, batch_size, run_id=self.run_lock.run_id)
        self.rewards.ready(cfg.resources.timeout_s)
        self.rollout.ready()
        self._get(self.learner.ping(), "starting the learner")
        self._nccl_engines: set = set()
        if self.sync_mode == "nccl":
            self._init_nccl(dict(self.rollout.engines))
        print(f"actors ready in {time.time() - t0:.1f}s (weight sync: {self.sync_mode})", flush=True)
        self.eval_problems, self.eval_prompts = checked.eval_problems, checked.eval_prompts
        self.reward_models = RewardModelRounds(self)
        self.start_metrics = {}
        if cfg.output.resume:
            self.resume(cfg.output.resume)
        elif self.rewards.weights.models:
            self.start_metrics = self.reward_models.start()

    def _get(self, call, what: str):
        """The learner group's answer to ``call`` (a ``LearnerCall``), under resources.timeout_s."""
        return self.learner.get(call, what)

    # ---------------------------------------------------------------------------- weights
    def _init_nccl(self, engines: dict) -> None:
        self._get(self.learner.init_nccl_sync(engines, self.cfg.rollout.tensor_parallel_size, self.rollout.dtype),
                  "NCCL weight-sync setup")
        self._nccl_engines |= set(engines)

    def sync_weights(self, version: int, names: list[str] | None = None) -> float:
        """The learner's current weights to every engine (or ``names``), labelled ``version``.

        ``sync_parts`` keeps where the last sync's time went (shm path: the learner's write, and the
        slowest engine's reload inside vLLM); the rest of the returned time is Ray round trips.
        """
        t0 = time.time()
        self.sync_parts = {}
        self.sync_other_node = 0  # engines that got the weights through the object store, off rank 0's node
        if self.sync_mode == "nccl":
            gone = self._nccl_engines - set(self.rollout.names)
            if gone:
                self._get(self.learner.drop_nccl_engines(sorted(gone)), "dropping dead engines from NCCL sync")
                self._nccl_engines -= gone
            targets = sorted(self._nccl_engines) if names is None else list(names)
            self._get(self.learner.nccl_send(version, targets), f"weight sync v{version}")
        elif self.sync_mode == "shm":
            targets = list(names) if names is not None else self.rollout.names
            path, node = self._get(self.learner.export_weights_file(self.rollout.dtype, version),
                                   f"weight sync v{version}: writing the weights")
            self.sync_parts["write_s"] = time.time() - t0
            nodes = self.rollout.node_ids(targets)  # an engine lost meanwhile is left out (replaced at the next heal)
            local = [n for n in nodes if nodes[n] == node]
            remote = [n for n in nodes if nodes[n] != node]
            if local:
                self.sync_parts["engine_load_s"] = self.rollout.sync_weights_path(path, version, local)
            self.sync_other_node = len(remote)
            if remote:  # engines on other nodes: through the object store
                blob = self.learner.export_weights_blob(self.rollout.dtype)
                self.rollout.sync_weights_blob(blob, version, remote)
        else:
            blob = self.learner.export_weights_blob(self.rollout.dtype)
            self.rollout.sync_weights_blob(blob, version, names)
        return time.time() - t0

    def _load_new_engines(self, engines: dict) -> None:
        """New engines (replacements, scale-up) get the current policy before they generate."""
        if self.sync_mode == "nccl":
            self._init_nccl(engines)
        if self.policy_version > 0:
            self.sync_weights(self.policy_version, list(engines))

    def _reconcile_pool(self) -> None:
        """Between steps: apply ``grpo scale`` requests and replace engines that died. A scale-up the
        cluster cannot hold (its totals, or placing the new engines in time) is refused: the pool keeps
        its size, the request is cleared and the run goes on."""
        from orchestrator.control import clear_control, read_control
        from orchestrator.placement import PlacementError

        control = read_control(self.out_dir)
        before = self.rollout.target
        if control and control["rollout_workers"] != before:
            wanted = control["rollout_workers"]
            refused = self._scale_refusal(wanted)
            if refused:
                clear_control(self.out_dir)
                print(f"warning: `grpo scale` to {wanted} engines refused ({refused}); the pool stays at {before}",
                      flush=True)
            else:
                print(f"rollout pool: scaling from {before} to {wanted} engines", flush=True)
                self.rollout.scale_to(wanted)
        try:
            self.rollout.heal(self._load_new_engines)
        except PlacementError as e:
            if self.rollout.target <= before:
                raise  # replacing dead engines: the pool cannot shrink below its size
            self.rollout.scale_to(before)  # stops the engines this scale-up started
            clear_control(self.out_dir)
            print(f"warning: `grpo scale` to more engines refused ({e}); the pool stays at {before}", flush=True)

    def _scale_refusal(self, wanted: int) -> Optional[str]:
        """Why the cluster cannot hold ``wanted`` engines next to the other roles (None: it can)."""
        import ray

        from orchestrator.placement import PlacementError, check_cluster, role_demands

        if wanted <= self.rollout.target:
            return None
        try:
            check_cluster(role_demands(self.cfg, num_engines=wanted), ray.cluster_resources())
        except PlacementError as e:
            return str(e)
        return None

    # ------------------------------------------------------------------------------- step
    def run_step(self, step: int) -> dict:
        cfg = self.cfg
        t0 = time.time()
        # where the data stood before this step's batch: a failure from here on (the pool's reconcile
        # included) checkpoints the previous step with this position, so its questions come again once
        self._sampler_before = self.sampler.state_dict() if self.prefetched is None else self._committed
        self._reconcile_pool()
        if self.prefetched is not None:  # generated during the previous step's update (off_policy_lag=1)
            (episodes, gen), self.prefetched = self.prefetched, None
            episodes, steps, rew = self._score(episodes)
        else:
            episodes, steps, gen, rew = self._generate_scored(self.sampler.next_batch())
        batch = Batch(episodes=episodes, group_size=cfg.rollout.group_size)
        self.stop.abandonable = False  # from here the step is finished, then checkpointed, on a stop signal
        update = self.learner.train_step(batch, step)
        if cfg.algorithm.off_policy_lag and step < cfg.total_steps:
            # the engines still hold the weights this step sampled with: generate the next step meanwhile
            self._committed = self.sampler.state_dict()
            t_next = time.time()
            self.prefetched = self._generate(self.sampler.next_batch())
            gen["time/prefetch_generate_s"] = time.time() - t_next
        learn = self._get(update, f"step {step}: learner update")
        self.policy_version = step
        # the step is trained: a failure before its records are written keeps them (_save_after_failure)
        self._trained = (step, episodes, {**step_metrics(episodes, cfg.rollout.group_size), **gen, **rew, **learn})
        sync_s = self.sync_weights(step)
        versions = self.rollout.policy_versions()
        if set(versions.values()) != {step}:
            raise TrainingError(f"step {step}: engines report policy versions {versions} after the sync")
        self.reward_models.observe(episodes, steps)
        iteration = self.reward_models.maybe_iterate(step)
        tokens = sum(len(e.response_token_ids) for e in episodes)
        metrics = {**step_metrics(episodes, cfg.rollout.group_size), **gen, **rew, **learn, **iteration}
        if step == 1:
            metrics.update({f"start/{k}": v for k, v in self.start_metrics.items()})
        if cfg.eval.every_steps and (step % cfg.eval.every_steps == 0 or step == cfg.total_steps):
            metrics.update(self.evaluate(step))
        metrics.update({
            "rollout/tokens_per_s": tokens / max(gen["time/generate_s"], 1e-9),
            "time/sync_s": sync_s,
            **{f"time/sync_{k}": v for k, v in self.sync_parts.items()},
            "sync/engines_other_node": self.sync_other_node,
            "time/step_s": time.time() - t0,
            "policy_version": step,
            "rollout/policy_lag": step - 1 - min(e.policy_version for e in episodes),
            "rollout/engine_version_min": min(versions.values()),
            "data/epoch": self.sampler.epoch,
            "data/position": self.sampler.position,
        })
        self._write_samples(step, episodes)
        self._trained = None
        return metrics

    def evaluate(self, step: int) -> dict:
        """Greedy accuracy (and pass@k, maj@k) of the current policy on the held-out questions, through
        the rollout engines; per-question results go to <output.dir>/eval/step_<step>.jsonl."""
        import json

        from orchestrator.evaluate import grade
        from reward.rule_scorer import RuleRewardScorer
        from rollout.engine import SamplingSpec

        ec, t0 = self.cfg.eval, time.time()
        max_new = self.cfg.rollout.max_new_tokens
        greedy = [t[0] for t in self.rollout.generate_text(self.eval_prompts, SamplingSpec(1, max_new, temperature=0.0))]
        sampled = self.rollout.generate_text(self.eval_prompts, SamplingSpec(ec.samples, max_new, temperature=ec.temperature)) if ec.samples else None
        with RuleRewardScorer.from_config(self.cfg.reward) as scorer:
            summary, records = grade(self.eval_problems, greedy, sampled, scorer)
        os.makedirs(os.path.join(self.out_dir, "eval"), exist_ok=True)
        with open(os.path.join(self.out_dir, "eval", f"step_{step}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        out = {f"eval/{k}": v for k, v in summary.items() if k not in ("correct",)}
        out["time/eval_s"] = time.time() - t0
        return out

    def _write_samples(self, step: int, episodes: list[Episode]) -> None:
        import json

        with open(os.path.join(self.out_dir, "samples.jsonl"), "a") as f:
            for i, e in enumerate(episodes):  # the first sample of each group, and every one the verifier failed on
                if i % self.cfg.rollout.group_size and e.verifier_error is None:
                    continue
                row = {"step": step, "uid": e.problem.uid, "gold": e.problem.gold, "response": e.response_text,
                       "reward": e.reward}
                f.write(json.dumps(row if e.verifier_error is None else {**row, "verifier_error": e.verifier_error}) + "\n")

    def _generate(self, problems: list) -> tuple[list[Episode], dict]:
        return self.rollout.generate(problems, [self.prompt_ids[p.uid] for p in problems])

    def _segmenter(self) -> Optional[Callable[[Sequence[Episode]], list]]:
        """What splits responses into reasoning steps under process supervision (else None)."""
        from reward.process import segment

        if self.cfg.algorithm.supervision != "process":
            return None
        return lambda episodes: segment(episodes, self.tokenizer, self.cfg.algorithm.step_separator)

    def _score(self, episodes: list) -> tuple[list[Episode], Optional[list], dict]:
        """Score a whole step's episodes at once (after generation)."""
        segment = self._segmenter()
        steps = segment(episodes) if segment is not None else None
        episodes, rew = self.rewards.score(episodes, self.cfg.resources.timeout_s, steps)
        rew["time/reward_wait_s"] = rew["time/reward_s"]
        return episodes, steps, rew

    def _generate_scored(self, problems: list) -> tuple[list[Episode], Optional[list], dict, dict]:
        """Generate a step and score it: with ``reward.overlap_samples`` > 0, chunks of finished samples are
        scored while the engines still decode the rest (``reward.overlap``), and the learner, idle until the
        update, computes their reference logprobs meanwhile (``learner.reference_overlap``)."""
        from reward.overlap import ChunkScorer

        cfg = self.cfg
        chunk = cfg.reward.overlap_samples
        if not chunk:
            episodes, gen = self._generate(problems)
            episodes, steps, rew = self._score(episodes)
            return episodes, steps, gen, rew
        scorer = ChunkScorer(self.rewards, cfg.resources.timeout_s, self._segmenter())
        precompute, reference = reference_overlap(cfg), []  # the learner's precompute_reference calls, one per chunk

        def on_chunk(episodes: list[Episode]) -> None:
            scorer.submit(episodes)
            if precompute:
                reference.append(self.learner.precompute_reference(episodes))

        try:
            generated, gen = self.rollout.generate(problems, [self.prompt_ids[p.uid] for p in problems],
                                                   on_chunk=on_chunk, chunk_samples=chunk)
        except BaseException:
            scorer.close()
            raise
        generated_at = time.time()
        episodes, steps, rew = scorer.result()
        if [e.group_id for e in episodes] != [e.group_id for e in generated]:
            raise TrainingError(f"reward overlap: {len(episodes)} episodes scored for {len(generated)} generated")
        if reference:
            seconds = [self._get(call, "reference logprobs during generation") for call in reference]
            gen["time/reference_overlap_s"] = sum(seconds)
            gen["time/reference_wait_s"] = time.time() - generated_at
        return episodes, steps, gen, rew

    # -------------------------------------------------------------------- checkpoints
    def checkpoint(self, step: int) -> str:
        """A resumable checkpoint of the state after ``step`` (see orchestrator.checkpoint)."""
        from orchestrator.checkpoint import write_checkpoint

        t0 = time.time()

        def fill(folder: str) -> dict:
            version = self._get(self.learner.save_checkpoint(folder), f"checkpoint of step {step}: learner state")
            self.reward_models.save(folder)
            # a batch prefetched for the next step is generated again after a resume
            sampler = self._committed if self.prefetched is not None else self.sampler.state_dict()
            return {"policy_version": version, "learner_ranks": self.cfg.learner.num_ranks, "sampler": sampler,
                    "reward_models": self.reward_models.state_dict(), "total_steps": self.cfg.total_steps}

        path = write_checkpoint(self.out_dir, step, fill, self.cfg.output.keep_last)
        print(f"checkpoint: {path} ({time.time() - t0:.1f}s)", flush=True)
        return path

    def resume(self, spec: str) -> None:
        """Continue from a checkpoint: learner, reference, optimizer, data position, reward models; the
        engines get the checkpoint's policy; records of later steps are dropped from the run's logs."""
        from orchestrator.checkpoint import find_checkpoint, read_state, set_aside_newer, truncate_jsonl

        t0 = time.time()
        path = find_checkpoint(self.out_dir, spec)
        state = read_state(path)
        step = int(state["step"])
        try:
            self.sampler.load_state_dict(state["sampler"])
        except ValueError as e:
            raise TrainingError(f"resume from {path}: {e} (the data or seed changed)") from e
        version = self._get(self.learner.load_checkpoint(path), f"resume from {path}: learner state")
        if version != state["policy_version"]:
            raise TrainingError(f"resume from {path}: learner state holds {version} updates, the checkpoint says {state['policy_version']}")
        if self.rewards.weights.models:
            self.reward_models.restore(state["reward_models"], path)
        self.policy_version = version
        self.sync_weights(version)
        aside = set_aside_newer(self.out_dir, step)
        if aside:
            print(f"resuming from step {step} abandons the later checkpoints: moved to {aside}", flush=True)
        for name in ("metrics.jsonl", "samples.jsonl"):
            truncate_jsonl(os.path.join(self.out_dir, name), step)
        self.start_step = step + 1
        print(f"resumed from {path}: continuing at step {self.start_step} ({time.time() - t0:.1f}s)", flush=True)

    def _should_checkpoint(self, step: int) -> bool:
        every = self.cfg.output.checkpoint_every
        return every > 0 and (step % every == 0 or step == self.cfg.total_steps)

    # ------------------------------------------------------------------------------- loop
    def train(self) -> str:
        from tqdm import tqdm

        from orchestrator.checkpoint import resume_hint
        from orchestrator.metric_sinks import open_sinks
        from orchestrator.stop_signals import StopRequested, stop_in

        cfg = self.cfg
        with self.stop:  # SIGTERM / SIGINT: see orchestrator.stop_signals
            self._start_up()
            bar = tqdm(total=cfg.total_steps, initial=self.start_step - 1, desc="GRPO steps", unit="step", disable=None)
            self.logger = logger = MetricsLogger(
                self.out_dir, cfg.total_steps, cfg.logging.log_every, cfg.logging.ray_metrics,
                tags={"run": os.path.basename(os.path.abspath(self.out_dir))}, echo=bar.write,
                sinks=open_sinks(cfg, self.out_dir, echo=bar.write))
            for step in range(self.start_step, cfg.total_steps + 1):
                try:
                    self.stop.abandonable = True  # until run_step hands the batch to the learner
                    metrics = self.run_step(step)
                    self.stop.abandonable = False
                    logger.log(step, metrics)
                    checkpointed = self._should_checkpoint(step) or self.stop.received is not None
                    if checkpointed:
                        self.checkpoint(step)
                except Exception as e:
                    self.stop.abandonable = False
                    stop = stop_in(e)  # a stop that came while the step could still be dropped
                    if stop is not None:
                        raise RunStopped(f"{stop}: step {step} abandoned{self._save_after_failure(step)}",
                                         stop.exit_code) from None
                    saved = self._save_after_failure(step)
                    raise TrainingError(f"step {step} failed: {e}{saved}") from e
                bar.update(1)
                if self.stop.received is not None:
                    if not checkpointed:  # the signal came after the check above
                        self.checkpoint(step)
                    stopped = StopRequested(self.stop.received)
                    raise RunStopped(f"{stopped} after step {step}, checkpointed\nto resume: "
                                     f"{resume_hint(self.out_dir)}", stopped.exit_code)
        bar.close()
        final = os.path.abspath(os.path.join(self.out_dir, "final"))
        if cfg.output.save_final:
            self._get(self.learner.save_pretrained(final), "saving the final policy")
            print(f"saved policy to {final}", flush=True)
        logger.close()
        return final

    def _start_up(self) -> None:
        """``setup`` under the stop signals: a stop during start-up (minutes of starting actors) abandons
        it; the actors and the local Ray are shut down on the way out and the run exits 128 + signal."""
        from orchestrator.checkpoint import resume_hint
        from orchestrator.stop_signals import stop_in

        self.stop.abandonable = True
        try:
            self.setup()
            self.stop.check()
        except Exception as e:
            stop = stop_in(e)
            if stop is None:
                raise
            hint = resume_hint(self.out_dir)
            raise RunStopped(f"{stop} while starting: nothing was trained in this start"
                             + (f"\nto resume: {hint}" if hint else ""), stop.exit_code) from None
        finally:
            self.stop.abandonable = False

    def _save_after_failure(self, step: int) -> str:
        """Keep what was trained before the failure and say how to resume, also under
        output.checkpoint_every=0. If the learner still holds the state after step-1 (the failure came
        before the update), that state becomes a checkpoint; if the step was trained and failed later
        (the weight sync, say), the step's record and samples are written (``step/failed_after_update``)
        and the state after it becomes a checkpoint; otherwise the policy is saved in HF format, named by
        the learner's count of updates."""
        from orchestrator.checkpoint import list_checkpoints, resume_hint

        try:
            version = self._get(self.learner.ping(), "asking the learner for its step")
            done = list_checkpoints(self.out_dir)
            if version == 0 or (done and done[-1][0] == version):
                saved = ""
            elif version == step - 1:
                self.sampler.load_state_dict(self._sampler_before)  # the failed step's questions come again
                self.prefetched = None
                saved = f" (state after step {version} checkpointed to {self.checkpoint(version)})"
            elif version == step and self._trained is not None and self._trained[0] == step:
                _, episodes, partial = self._trained
                self.logger.log(step, {**partial, "step/failed_after_update": 1.0})
                self._write_samples(step, episodes)
                self._trained = None
                saved = f" (step {step} was trained: state after it checkpointed to {self.checkpoint(step)})"
            else:
                path = os.path.abspath(os.path.join(self.out_dir, f"policy_after_step_{version}"))
                self._get(self.learner.save_pretrained(path), "saving the policy after a failure")
                saved = f" (policy after step {version} saved to {path})"
        except Exception as e:  # noqa: BLE001 - the learner itself may be what failed
            saved = f" (could not save the policy: {e})"
        hint = resume_hint(self.out_dir)
        return saved + (f"\nto resume: {hint}" if hint else "")

    def shutdown(self) -> None:
        if hasattr(self, "logger"):
            self.logger.close(exit_code=1)  # a run that ended well has closed it already (close is idempotent)
        for name in ("learner", "reward_models", "rollout", "rewards"):
            if hasattr(self, name):
                getattr(self, name).shutdown()
        if hasattr(self, "run_lock"):
            from learner.weight_sync import sweep_weight_files

            sweep_weight_files(self.run_lock.run_id)  # a dead learner's file, when it shared this node
            self.run_lock.release()
