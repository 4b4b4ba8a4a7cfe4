"""Reward actors: rule verifiers run in killable worker processes with per-sample deadlines.

Three layers, each wrapping the one below:

* ``reward.rule_scorer.RuleRewardScorer`` (plain class): scores ``(task, completion, gold, uid)``
  items in a memory-capped process, each under its own deadline. A sample whose verifier runs
  late, raises or kills its process is wrong (and counted); the process is replaced.
* ``RewardWorker`` (plain class, run as a Ray actor by the pool): holds one scorer and the learned
  reward models in use (``reward.model.RewardModel``), which can be hot-swapped (Iterative RL).
* ``RewardPool`` (driver side): splits a step's episodes into contiguous shards, one per
  worker, scores them in parallel under a deadline, composes rule and learned rewards
  (``reward.compose``) and returns the rewarded episodes in their original order. An episode the
  verifier gave no verdict on carries the error (``Episode.verifier_error``), counted in
  ``reward/verifier_errors``. A worker that dies, or hangs (no heartbeat answered for the stall
  deadline, ``orchestrator.remote.StallWatch``: a stopped process; a busy one still answers), is
  replaced and its shard rescored (``reward/worker_restarts``; hung ones also in ``reward/workers_hung``).
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

import ray

from orchestrator.placement import actor_options, place, release, scheduling
from orchestrator.remote import (HEARTBEAT_ACTOR, STALL_TIMEOUT_S, ActorDied, ActorHung, StallWatch, gather,
                                 gather_tolerating_deaths, shard_bounds)
from orchestrator.types import Episode
from reward.compose import RewardWeights, compose, reward_stats
from reward.process import Steps
from reward.rule_scorer import STARTUP_TIMEOUT_S, Item, RewardError, RuleRewardScorer, Verdict

__all__ = ["RewardError", "RewardPool", "RewardWorker", "RuleRewardScorer", "reward_model_dtype"]

if TYPE_CHECKING:
    from orchestrator.config import TrainConfig


def reward_model_dtype(cfg: "TrainConfig") -> str:
    """``reward.model_dtype`` resolved: 'auto' follows ``model.dtype``; when that is 'auto' too, fp32
    (reward workers run on CPU, where 'auto' means fp32 for the policy as well)."""
    if cfg.reward.model_dtype != "auto":
        return cfg.reward.model_dtype
    return cfg.model.dtype if cfg.model.dtype != "auto" else "float32"


class RewardWorker:
    """Ray actor (``RewardPool`` starts it with a heartbeat thread): one RuleRewardScorer (always: its
    verdict is logged even under learned rewards) plus the learned reward models in use, by kind ('orm',
    'prm'), each swappable in place."""

    def __init__(
        self,
        correct_reward: float,
        incorrect_reward: float,
        timeout_s: float,
        verifiers: Optional[Mapping[str, Callable[[str, str], bool]]] = None,
        models: Optional[Mapping[str, str]] = None,
        model_opts: Optional[Mapping] = None,
        memory_mb: int = 1024,
    ) -> None:
        from orchestrator.worker_metrics import WorkerGauges

        self._scorer = RuleRewardScorer(correct_reward, incorrect_reward, timeout_s, verifiers, memory_mb)
        self._scorer.start()
        self.gauges = WorkerGauges("reward", ray.get_runtime_context().get_actor_name() or "reward-worker")
        self._timeout_s = float(timeout_s)
        self._model_opts = dict(model_opts or {})
        self._models: dict = {}
        self.scored = 0  # samples scored: the progress ``heartbeat`` reports
        for kind, path in (models or {}).items():
            self.load_model(kind, path, 0)

    def load_model(self, kind: str, path: str, version: int) -> int:
        """Load (or hot-swap) the reward model of ``kind``; the old one scores until this returns."""
        from reward.model import RewardModel

        self._models[kind] = RewardModel(path, kind, version=version, **self._model_opts)
        return version

    def model_versions(self) -> dict:
        return {kind: {"path": m.path, "version": m.version} for kind, m in self._models.items()}

    def score(self, items: Sequence[Item], requests: Optional[Mapping[str, Sequence]] = None,
              step_texts: Optional[Sequence[Sequence[str]]] = None) -> tuple[list[Verdict], dict, dict]:
        """(rule verdicts, {kind: per-request step probabilities}, stats) for one shard; with
        ``step_texts`` (process supervision) the verdicts carry rule step rewards.

        A model batch slower than ``timeout_s`` per sample is an error naming the model and the
        samples (a learned reward never falls back to a silent zero).
        """
        self.gauges.started(len(items))
        results, stats = self._scorer.score(items, step_texts=step_texts)
        scores = {}
        for kind, reqs in (requests or {}).items():
            if kind not in self._models:
                raise RewardError(f"no {kind} reward model is loaded in this worker")
            model, out = self._models[kind], []
            for start in range(0, len(reqs), model.batch_size):
                chunk = reqs[start : start + model.batch_size]
                t0 = time.monotonic()
                out.extend(model.score(chunk))
                if time.monotonic() - t0 > self._timeout_s * len(chunk):
                    uids = ", ".join(p.uid for p, _ in chunk)
                    raise RewardError(f"{kind} model {model.path!r} took {time.monotonic() - t0:.1f}s for "
                                      f"{len(chunk)} samples (over {self._timeout_s}s each): {uids}")
            scores[kind] = out
        self.gauges.finished(0, 0.0)
        self.scored += len(items)
        return results, scores, stats

    def ping(self) -> int:
        """Liveness check; returns the actor's process id."""
        return os.getpid()

    def heartbeat(self) -> int:
        """Answered on the actor's heartbeat thread while ``score`` runs: alive, even if busy (each sample
        is bounded by its own verifier deadline). Returns ``scored``."""
        return self.scored

    def close(self) -> None:
        self._scorer.close()


class RewardPool:
    """Driver-side handle on ``num_workers`` RewardWorker actors."""

    def __init__(
        self,
        num_workers: int = 1,
        num_cpus_per_worker: float = 0.5,
        correct_reward: float = 1.0,
        incorrect_reward: float = 0.0,
        timeout_s: float = 10.0,
        verifiers: Optional[Mapping[str, Callable[[str, str], bool]]] = None,
        name_prefix: str = "reward-worker",
        weights: RewardWeights = RewardWeights(),
        models: Optional[Mapping[str, str]] = None,
        model_opts: Optional[Mapping] = None,
        resources: Optional[Mapping[str, float]] = None,
        max_restarts: int = 3,
        placement_timeout_s: float = 120.0,
        memory_mb: int = 1024,
        stall_timeout_s: float = STALL_TIMEOUT_S,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.weights, self.correct_reward, self.incorrect_reward = weights, correct_reward, incorrect_reward
        self.model_paths = dict(models or {})
        self.model_version = {kind: 0 for kind in self.model_paths}
        self._bundle = {k: float(v) for k, v in {"CPU": num_cpus_per_worker, **dict(resources or {})}.items() if v > 0}
        self._args = (correct_reward, incorrect_reward, timeout_s, verifiers)
        self._model_opts, self._placement_timeout_s, self._memory_mb = model_opts, placement_timeout_s, memory_mb
        self.restarts_left, self.restarts = max_restarts, 0
        self.stall_s, self.workers_hung = stall_timeout_s, 0
        self.names = [f"{name_prefix}-{i}" for i in range(num_workers)]
        self._pgs: list = [None] * num_workers
        self.workers = [self._spawn(i) for i in range(num_workers)]

    def _spawn(self, i: int):
        """Start worker ``i`` in its own placement group, with the reward models currently in use."""
        release(self._pgs[i])
        self._pgs[i] = place(self.names[i], [self._bundle], self._placement_timeout_s)
        actor = ray.remote(**HEARTBEAT_ACTOR)(RewardWorker)
        return actor.options(name=self.names[i], **actor_options(self._bundle), **scheduling(self._pgs[i])).remote(
            *self._args, self.model_paths, self._model_opts, self._memory_mb)

    def _restart(self, i: int, why: str) -> None:
        """Replace dead (or killed) worker ``i`` (same models, same versions) and wait until it answers."""
        if self.restarts_left <= 0:
            raise RewardError(f"{self.names[i]} {why} and reward.max_restarts replacements are used up")
        self.restarts_left -= 1
        self.restarts += 1
        old = self.names[i]
        self.names[i] = f"{old.split('-restart')[0]}-restart{self.restarts}"
        print(f"warning: {old} {why}; restarting it as {self.names[i]} and rescoring its shard", flush=True)
        self.workers[i] = self._spawn(i)
        self._gather([(self.names[i], self.workers[i].ping.remote())], STARTUP_TIMEOUT_S)
        for kind, path in self.model_paths.items():
            self._gather([(self.names[i], self.workers[i].load_model.remote(kind, path, self.model_version[kind]))],
                         STARTUP_TIMEOUT_S)

    @classmethod
    def from_config(
        cls,
        cfg: "TrainConfig",
        models: Optional[Mapping[str, str]] = None,
        verifiers: Optional[Mapping[str, Callable[[str, str], bool]]] = None,
        name_prefix: str = "reward-worker",
    ) -> "RewardPool":
        """Build from a whole ``TrainConfig`` (reward section, prompt settings); ``models``: kind -> path."""
        rc = cfg.reward
        return cls(
            num_workers=rc.num_workers,
            num_cpus_per_worker=rc.num_cpus_per_worker,
            correct_reward=rc.correct_reward,
            incorrect_reward=rc.incorrect_reward,
            timeout_s=rc.timeout_s,
            verifiers=verifiers,
            name_prefix=name_prefix,
            weights=RewardWeights(rc.rule_weight, rc.orm_weight, rc.prm_weight),
            models=models,
            model_opts={"system_prompt": cfg.data.system_prompt, "max_prompt_tokens": cfg.data.max_prompt_tokens,
                        "batch_size": rc.model_batch_size, "trust_remote_code": cfg.model.trust_remote_code,
                        "dtype": reward_model_dtype(cfg)},
            resources=rc.resources, max_restarts=rc.max_restarts,
            placement_timeout_s=cfg.resources.placement_timeout_s, memory_mb=rc.verifier_memory_mb,
            stall_timeout_s=cfg.resources.stall_timeout_s,
        )

    def ready(self, timeout_s: float) -> None:
        """Wait until every worker has started its verifier process; RewardError names a late one."""
        self._gather([(name, worker.ping.remote()) for name, worker in zip(self.names, self.workers)], timeout_s)

    def _gather(self, calls: list[tuple[str, "ray.ObjectRef"]], timeout_s: float) -> list:
        return gather(calls, timeout_s, "reward workers", RewardError)

    def swap_model(self, kind: str, path: str, version: int, timeout_s: float) -> None:
        """Hot-swap the ``kind`` reward model in every worker; returns once all of them score with it."""
        self._gather([(n, w.load_model.remote(kind, path, version)) for n, w in zip(self.names, self.workers)], timeout_s)
        self.model_paths[kind], self.model_version[kind] = path, version

    def model_versions(self, timeout_s: float) -> list[dict]:
        return self._gather([(n, w.model_versions.remote()) for n, w in zip(self.names, self.workers)], timeout_s)

    def score(self, episodes: Sequence[Episode], timeout_s: float, steps: Optional[Sequence[Steps]] = None,
              rule_only: bool = False) -> tuple[list[Episode], dict]:
        """Score episodes in parallel; returns them rewarded (and step-rewarded when ``steps`` is
        given: process supervision), in order, with aggregated stats. ``rule_only``: the verifier's
        reward alone (labelling samples for reward-model training)."""
        started = time.monotonic()
        rewarded, prm_scores, timeouts = self.score_parts(episodes, timeout_s, steps, rule_only)
        return rewarded, self.stats(rewarded, prm_scores, timeouts, time.monotonic() - started)

    def stats(self, rewarded: Sequence[Episode], prm_scores: Optional[list], timeouts: int, seconds: float) -> dict:
        """A step's reward metrics from ``score_parts`` answers (joined, when a step was scored in chunks)."""
        return {"reward/timeouts": timeouts,
                "reward/verifier_errors": sum(e.verifier_error is not None for e in rewarded),
                "reward/worker_restarts": self.restarts, "reward/workers_hung": self.workers_hung,
                "time/reward_s": seconds,
                **reward_stats(rewarded, prm_scores)}

    def score_parts(self, episodes: Sequence[Episode], timeout_s: float, steps: Optional[Sequence[Steps]] = None,
                    rule_only: bool = False) -> tuple[list[Episode], Optional[list], int]:
        """``score`` without the metrics: (rewarded episodes, per-episode PRM scores or None, timeouts)."""
        weights = RewardWeights() if rule_only else self.weights
        missing = [kind for kind in weights.models if kind not in self.model_paths]
        if missing:
            raise RewardError(f"reward weights use the {', '.join(missing)} model but none is loaded")
        items = [
            (ep.problem.task, ep.response_text, ep.problem.gold, f"{ep.problem.uid} (episode {i}, group {ep.group_id})")
            for i, ep in enumerate(episodes)
        ]
        requests: dict[str, list] = {}
        if "orm" in weights.models:
            requests["orm"] = [(ep.problem, (ep.response_text,)) for ep in episodes]
        if "prm" in weights.models:
            if steps is None:
                raise RewardError("the process reward model needs the episodes' steps (process supervision)")
            requests["prm"] = [(ep.problem, tuple(texts)) for ep, (_, texts) in zip(episodes, steps)]
        bounds = shard_bounds(len(items), len(self.workers))
        shards = [(b, i) for i, b in enumerate(bounds) if b[1] > b[0]]
        step_texts = None if steps is None else [list(texts) for _, texts in steps]
        answers = self._score_shards(items, requests, step_texts, shards, timeout_s)
        shards = [(b, self.names[i], self.workers[i]) for b, i in shards]
        rewarded: list[Episode] = []
        prm_scores: list = []
        timeouts = 0
        for ((start, end), name, _), (results, scores, stats) in zip(shards, answers):
            if len(results) != end - start or any(len(v) != end - start for v in scores.values()):
                raise RewardError(f"reward worker {name} returned {len(results)} results for {end - start} episodes")
            for i, verdict in enumerate(results):
                k = start + i
                orm = scores["orm"][i][-1] if "orm" in scores else None
                prm = scores["prm"][i] if "prm" in scores else None
                prm_scores.append(prm or [])
                episode = compose(episodes[k], verdict.reward, verdict.correct, orm, prm, weights,
                                  None if steps is None else (steps[k][0], verdict.step_rewards))
                rewarded.append(replace(episode, verifier_error=verdict.error))
            timeouts += stats["timeouts"]
        return rewarded, prm_scores if "prm" in requests else None, timeouts

    def _score_shards(self, items: list, requests: dict, step_texts: Optional[list], shards: list,
                      timeout_s: float) -> list:
        """One answer per shard ((start, end), worker index); a worker that dies, or hangs (answers no
        heartbeat for the stall deadline: it is killed), is restarted and its shard scored again by the
        replacement."""
        answers: dict[int, object] = {}
        todo = list(shards)
        while todo:
            calls = [(self.names[i], self.workers[i].score.remote(items[a:b], {k: r[a:b] for k, r in requests.items()},
                                                                  None if step_texts is None else step_texts[a:b]))
                     for (a, b), i in todo]
            watch = StallWatch({self.names[i]: self.workers[i] for _, i in todo}, self.stall_s)
            got = gather_tolerating_deaths(calls, timeout_s, "reward workers", RewardError, watch)
            retry = []
            for ((a, b), i), answer in zip(todo, got):
                if isinstance(answer, ActorHung):
                    self.workers_hung += 1
                    _kill(self.workers[i])
                    self._restart(i, f"{answer.reason} while scoring episodes {a}-{b - 1}: killed")
                    retry.append(((a, b), i))
                elif isinstance(answer, ActorDied):
                    self._restart(i, f"died while scoring episodes {a}-{b - 1}")
                    retry.append(((a, b), i))
                else:
                    answers[a] = answer
            todo = retry
        return [answers[a] for (a, _), _ in shards]

    def shutdown(self) -> None:
        """Stop the verifier processes cleanly (a bare kill makes multiprocessing print tracebacks), then kill the actors."""
        try:
            ray.wait([w.close.remote() for w in self.workers], num_returns=len(self.workers), timeout=10.0)
        except Exception:  # noqa: BLE001 - a dead worker has nothing to close
            pass
        for worker in self.workers:
            _kill(worker)
        for pg in self._pgs:
            release(pg)
        self.workers, self._pgs = [], []


def _kill(worker) -> None:
    try:
        ray.kill(worker, no_restart=True)
    except Exception:  # noqa: BLE001 - already dead: nothing to release
        pass
