"""Reward actors: rule verifiers run in killable worker processes with per-sample deadlines.

Three layers, each wrapping the one below:

* ``RuleRewardScorer`` (plain class): scores ``(task, completion, gold, uid)`` items. Each
  verifier call runs in a one-process ``ProcessPoolExecutor`` kept warm between calls. A
  sample that runs past ``timeout_s`` scores ``incorrect_reward`` and is counted as a
  timeout; the stuck process is killed and the pool recreated. A verifier that raises is
  a bug, not a wrong answer: it raises ``RewardError`` naming the sample.
* ``RewardWorker`` (Ray actor): holds one scorer and the learned reward models in use
  (``reward.model.RewardModel``), which can be hot-swapped (Iterative RL).
* ``RewardPool`` (driver side): splits a step's episodes into contiguous shards, one per
  worker, scores them in parallel under a deadline, composes rule and learned rewards
  (``reward.compose``) and returns the rewarded episodes in their original order.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

import ray

from orchestrator.placement import actor_options, place, release, scheduling
from orchestrator.remote import ActorDied, gather, gather_tolerating_deaths, shard_bounds
from orchestrator.types import Episode
from reward.compose import RewardWeights, compose, reward_stats
from reward.process import Steps
from reward.verifiers import VERIFIERS, warm_up

if TYPE_CHECKING:
    from orchestrator.config import TrainConfig

Item = tuple[str, str, str, str]
"""One sample to score: (task, completion, gold, uid)."""

_STARTUP_TIMEOUT_S = 300.0
"""Deadline for starting a verifier process and importing the parsers (not a sample's time)."""


def reward_model_dtype(cfg: "TrainConfig") -> str:
    """``reward.model_dtype`` resolved: 'auto' follows ``model.dtype``; when that is 'auto' too, fp32
    (reward workers run on CPU, where 'auto' means fp32 for the policy as well)."""
    if cfg.reward.model_dtype != "auto":
        return cfg.reward.model_dtype
    return cfg.model.dtype if cfg.model.dtype != "auto" else "float32"


class RewardError(RuntimeError):
    """Scoring failed for a reason other than a wrong answer; the message names the sample or worker."""


def _exit_when_orphaned() -> None:
    """Pool-process initializer: exit if the parent dies (a killed actor leaves no strays)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _mp_context() -> multiprocessing.context.BaseContext:
    """forkserver where available (cheap restarts from a warm server), else spawn.

    Never plain fork: the Ray actor that owns the pool runs threads.
    """
    if sys.platform != "win32" and "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


class RuleRewardScorer:
    """Scores items with rule verifiers, each sample under its own deadline."""

    def __init__(
        self,
        correct_reward: float = 1.0,
        incorrect_reward: float = 0.0,
        timeout_s: float = 10.0,
        verifiers: Optional[Mapping[str, Callable[[str, str], bool]]] = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.correct_reward = float(correct_reward)
        self.incorrect_reward = float(incorrect_reward)
        self.timeout_s = float(timeout_s)
        self.verifiers = dict(VERIFIERS if verifiers is None else verifiers)
        self._pool: Optional[cf.ProcessPoolExecutor] = None
        self._context = _mp_context()
        if self._context.get_start_method() == "forkserver":
            # Imported once by the fork server, so a restarted verifier process is ready in
            # well under a second (no effect if this process's fork server already runs).
            modules = {"math_verify", "reward.verifiers", __name__}
            modules |= {fn.__module__ for fn in self.verifiers.values()}
            self._context.set_forkserver_preload(sorted(modules))

    # -- pool lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the verifier process and import the parsers, outside any sample's deadline."""
        if self._pool is not None:
            return
        pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=self._context, initializer=_exit_when_orphaned)
        try:
            pool.submit(warm_up).result(timeout=_STARTUP_TIMEOUT_S)
        except BaseException as err:
            self._kill(pool)
            raise RewardError(f"could not start the verifier process: {type(err).__name__}: {err}") from err
        self._pool = pool

    def close(self) -> None:
        """Kill the verifier process (idempotent)."""
        if self._pool is not None:
            self._kill(self._pool)
            self._pool = None

    @staticmethod
    def _kill(pool: cf.ProcessPoolExecutor) -> None:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for process in processes:
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5.0)

    # -- scoring --------------------------------------------------------------------------

    def _verifier(self, task: str, uid: str) -> Callable[[str, str], bool]:
        try:
            return self.verifiers[task]
        except KeyError:
            known = ", ".join(sorted(self.verifiers))
            raise RewardError(f"sample {uid!r}: unknown task {task!r} (known: {known})") from None

    def _submit(self, items: Sequence[Item]) -> list[cf.Future]:
        assert self._pool is not None
        return [self._pool.submit(self._verifier(task, uid), completion, gold) for task, completion, gold, uid in items]

    def score(self, items: Sequence[Item]) -> tuple[list[tuple[float, bool]], dict]:
        """Score items in order; returns [(reward, correct), ...] and {'timeouts', 'seconds'}.

        All pending items are queued at once; the single worker runs them in order, so
        waiting on each future in turn with ``timeout_s`` gives every sample its own
        deadline, measured from when the previous one finished.
        """
        started = time.monotonic()
        for task, _, _, uid in items:
            self._verifier(task, uid)  # fail on an unknown task before any work
        results: list[tuple[float, bool]] = []
        timeouts = 0
        while len(results) < len(items):
            self.start()
            pending = items[len(results):]
            futures = self._submit(pending)
            for (task, _, _, uid), future in zip(pending, futures):
                try:
                    correct = bool(future.result(timeout=self.timeout_s))
                except cf.TimeoutError:
                    timeouts += 1
                    results.append((self.incorrect_reward, False))
                    self.close()  # kill the stuck process; the rest is resubmitted to a new one
                    break
                except BrokenProcessPool as err:
                    self.close()
                    raise RewardError(f"verifier process died while scoring sample {uid!r} (task {task!r})") from err
                except Exception as err:
                    self.close()  # drop the samples still queued behind it: the next call starts clean
                    raise RewardError(
                        f"verifier for task {task!r} raised on sample {uid!r}: {type(err).__name__}: {err}"
                    ) from err
                results.append((self.correct_reward if correct else self.incorrect_reward, correct))
        return results, {"timeouts": timeouts, "seconds": time.monotonic() - started}


@ray.remote
class RewardWorker:
    """Ray actor: one RuleRewardScorer (always: its verdict is logged even under learned rewards) plus
    the learned reward models in use, by kind ('orm', 'prm'), each swappable in place."""

    def __init__(
        self,
        correct_reward: float,
        incorrect_reward: float,
        timeout_s: float,
        verifiers: Optional[Mapping[str, Callable[[str, str], bool]]] = None,
        models: Optional[Mapping[str, str]] = None,
        model_opts: Optional[Mapping] = None,
    ) -> None:
        from orchestrator.worker_metrics import WorkerGauges

        self._scorer = RuleRewardScorer(correct_reward, incorrect_reward, timeout_s, verifiers)
        self._scorer.start()
        self.gauges = WorkerGauges("reward", ray.get_runtime_context().get_actor_name() or "reward-worker")
        self._timeout_s = float(timeout_s)
        self._model_opts = dict(model_opts or {})
        self._models: dict = {}
        for kind, path in (models or {}).items():
            self.load_model(kind, path, 0)

    def load_model(self, kind: str, path: str, version: int) -> int:
        """Load (or hot-swap) the reward model of ``kind``; the old one scores until this returns."""
        from reward.model import RewardModel

        self._models[kind] = RewardModel(path, kind, version=version, **self._model_opts)
        return version

    def model_versions(self) -> dict:
        return {kind: {"path": m.path, "version": m.version} for kind, m in self._models.items()}

    def score(self, items: Sequence[Item], requests: Optional[Mapping[str, Sequence]] = None) -> tuple[list, dict, dict]:
        """(rule results, {kind: per-request step probabilities}, stats) for one shard.

        A model batch slower than ``timeout_s`` per sample is an error naming the model and the
        samples (a learned reward never falls back to a silent zero).
        """
        self.gauges.started(len(items))
        results, stats = self._scorer.score(items)
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
        return results, scores, stats

    def ping(self) -> int:
        """Liveness check; returns the actor's process id."""
        return os.getpid()

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
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.weights, self.correct_reward, self.incorrect_reward = weights, correct_reward, incorrect_reward
        self.model_paths = dict(models or {})
        self.model_version = {kind: 0 for kind in self.model_paths}
        self._bundle = {k: float(v) for k, v in {"CPU": num_cpus_per_worker, **dict(resources or {})}.items() if v > 0}
        self._args = (correct_reward, incorrect_reward, timeout_s, verifiers)
        self._model_opts, self._placement_timeout_s = model_opts, placement_timeout_s
        self.restarts_left, self.restarts = max_restarts, 0
        self.names = [f"{name_prefix}-{i}" for i in range(num_workers)]
        self._pgs: list = [None] * num_workers
        self.workers = [self._spawn(i) for i in range(num_workers)]

    def _spawn(self, i: int):
        """Start worker ``i`` in its own placement group, with the reward models currently in use."""
        release(self._pgs[i])
        self._pgs[i] = place(self.names[i], [self._bundle], self._placement_timeout_s)
        return RewardWorker.options(name=self.names[i], **actor_options(self._bundle), **scheduling(self._pgs[i])).remote(
            *self._args, self.model_paths, self._model_opts)

    def _restart(self, i: int, why: str) -> None:
        """Replace dead worker ``i`` (same models, same versions) and wait until it answers."""
        if self.restarts_left <= 0:
            raise RewardError(f"{self.names[i]} {why} and reward.max_restarts replacements are used up")
        self.restarts_left -= 1
        self.restarts += 1
        old = self.names[i]
        self.names[i] = f"{old.split('-restart')[0]}-restart{self.restarts}"
        print(f"warning: {old} {why}; restarting it as {self.names[i]} and rescoring its shard", flush=True)
        self.workers[i] = self._spawn(i)
        self._gather([(self.names[i], self.workers[i].ping.remote())], _STARTUP_TIMEOUT_S)
        for kind, path in self.model_paths.items():
            self._gather([(self.names[i], self.workers[i].load_model.remote(kind, path, self.model_version[kind]))],
                         _STARTUP_TIMEOUT_S)

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
            placement_timeout_s=cfg.resources.placement_timeout_s,
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
        return {"reward/timeouts": timeouts, "reward/worker_restarts": self.restarts, "time/reward_s": seconds,
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
        answers = self._score_shards(items, requests, shards, timeout_s)
        shards = [(b, self.names[i], self.workers[i]) for b, i in shards]
        rewarded: list[Episode] = []
        prm_scores: list = []
        timeouts = 0
        for ((start, end), name, _), (results, scores, stats) in zip(shards, answers):
            if len(results) != end - start or any(len(v) != end - start for v in scores.values()):
                raise RewardError(f"reward worker {name} returned {len(results)} results for {end - start} episodes")
            for i, (r, c) in enumerate(results):
                k = start + i
                orm = scores["orm"][i][-1] if "orm" in scores else None
                prm = scores["prm"][i] if "prm" in scores else None
                prm_scores.append(prm or [])
                rewarded.append(compose(episodes[k], r, c, orm, prm, weights, steps[k] if steps is not None else None,
                                        self.correct_reward, self.incorrect_reward))
            timeouts += stats["timeouts"]
        return rewarded, prm_scores if "prm" in requests else None, timeouts

    def _score_shards(self, items: list, requests: dict, shards: list, timeout_s: float) -> list:
        """One answer per shard ((start, end), worker index); a worker that dies is restarted and its
        shard scored again by the replacement."""
        answers: dict[int, object] = {}
        todo = list(shards)
        while todo:
            calls = [(self.names[i], self.workers[i].score.remote(items[a:b], {k: r[a:b] for k, r in requests.items()}))
                     for (a, b), i in todo]
            got = gather_tolerating_deaths(calls, timeout_s, "reward workers", RewardError)
            retry = []
            for ((a, b), i), answer in zip(todo, got):
                if isinstance(answer, ActorDied):
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
            try:
                ray.kill(worker)
            except Exception:  # already dead: nothing to release
                pass
        for pg in self._pgs:
            release(pg)
        self.workers, self._pgs = [], []
