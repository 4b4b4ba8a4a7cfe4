"""The rollout engines of a run: start them, shard a step's questions across them, sync weights, and
keep the pool at its target size while engines die or the user rescales it.

Elastic by design: each engine lives in its own placement group. An engine that dies during
generation is dropped and its questions are redone on the engines that remain, in the same step; a
replacement (or an engine added by ``grpo scale``) is started between steps and receives the current
weights before it generates anything. Every remote call has a deadline; a late engine is named.

A hung engine (a stopped process, a stuck vLLM core) is treated as a dead one, well before that
deadline: while an engine owes an answer it is asked for heartbeats on a thread of its own
(``orchestrator.remote.StallWatch``); one that shows no progress for ``resources.stall_timeout_s`` (no
heartbeat answer; during streamed generation, no new vLLM step either) is killed, with the vLLM
processes it started, and its work is redone on the others.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from typing import Callable, Optional, Sequence

import ray

from orchestrator.placement import actor_options, engine_bundle, place, release, scheduling
from orchestrator.remote import (HEARTBEAT_ACTOR, ActorDied, ActorHung, StallWatch, gather,
                                 gather_tolerating_deaths, clean_up_on, shard_bounds, task_failure)
from orchestrator.types import Episode, Problem
from rollout import engine_shm
from rollout.engine import RolloutEngine, SamplingSpec

log = logging.getLogger(__name__)


class RolloutError(RuntimeError):
    """An engine failed or missed its deadline, or none is left; the message names it."""


def engine_dtype(model_dtype: str, on_gpu: bool) -> str:
    """Engines run bf16 on GPU; on CPU fp32, which matches the fp32 learner's logprobs (bf16 is faster on
    CPUs with AMX/AVX512-BF16 and 4x slower without: see rollout.dtype and docs/benchmarks.md)."""
    if model_dtype != "auto":
        return model_dtype
    return "bfloat16" if on_gpu else "float32"


def engine_env(cfg) -> dict[str, str]:
    """Environment of an engine process (also used by bench/rollout_vs_hf.py, to measure what runs)."""
    env = {"VLLM_CONFIGURE_LOGGING": os.environ.get("VLLM_CONFIGURE_LOGGING", "1")}
    if cfg.rollout.num_gpus_per_worker == 0:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(cfg.rollout.cpu_reserved_cores)
    return env


class RolloutGroup:
    """The live RolloutEngine actors of a run, by name (``rollout-engine-<k>``; k never reused)."""

    def __init__(self, cfg, max_model_len: int, weight_transfer_backend: str | None = None, start: bool = True,
                 shm_record_dir: Optional[str] = None):
        """``shm_record_dir`` (the run's output folder): remember there the shared memory of every engine
        started, and first remove what an earlier start recorded and left (``rollout.engine_shm``)."""
        rc = cfg.rollout
        self.cfg = cfg
        self.on_gpu = rc.num_gpus_per_worker > 0
        self.dtype = rc.dtype if rc.dtype != "auto" else engine_dtype(cfg.model.dtype, self.on_gpu)
        self.timeout_s = cfg.resources.timeout_s
        self.stall_s = cfg.resources.stall_timeout_s
        self.max_model_len, self.backend = max_model_len, weight_transfer_backend
        self.target = rc.num_workers
        self.restarts_left = rc.max_restarts
        self.engines: dict[str, "ray.actor.ActorHandle"] = {}
        self._pgs: dict = {}
        self._nodes: dict[str, str] = {}
        self._helpers: dict[str, tuple[str, list, list]] = {}  # engine -> RolloutEngine.helper_processes()
        self._next_index = 0
        self.lost: list[str] = []  # engines that died or hung since the last heal (replacements owed)
        self.hung: list[str] = []  # engines killed as hung, over the run (metrics)
        self.shm_record_dir = shm_record_dir
        if shm_record_dir:
            engine_shm.sweep(shm_record_dir, ENGINE_SHUTDOWN_S)
        if start:
            self._start(self.target)

    # ------------------------------------------------------------------------------ membership
    @property
    def names(self) -> list[str]:
        return list(self.engines)

    def _start(self, count: int) -> dict:
        """Place and start ``count`` new engines; returns {name: handle} (not yet known to be ready)."""
        cfg, rc = self.cfg, self.cfg.rollout
        bundle = engine_bundle(cfg)
        env = engine_env(cfg)
        model = os.path.abspath(cfg.model.path) if os.path.isdir(cfg.model.path) else cfg.model.path
        started = {}
        for _ in range(count):
            name = f"rollout-engine-{self._next_index}"
            pg = place(name, [bundle], cfg.resources.placement_timeout_s)
            handle = ray.remote(**HEARTBEAT_ACTOR)(RolloutEngine).options(
                **actor_options(bundle), **scheduling(pg), runtime_env={"env_vars": env},
            ).remote(
                model, dtype=self.dtype, max_model_len=self.max_model_len,
                gpu_memory_utilization=rc.gpu_memory_utilization, kv_cache_gb=rc.kv_cache_gb,
                tensor_parallel_size=rc.tensor_parallel_size if self.on_gpu else 1,
                enforce_eager=rc.enforce_eager, enable_prefix_caching=rc.enable_prefix_caching,
                seed=cfg.seed + self._next_index, trust_remote_code=cfg.model.trust_remote_code,
                weight_transfer_backend=self.backend, name=name,
            )
            self._next_index += 1
            self._pgs[name] = pg
            self.engines[name] = handle
            started[name] = handle
        return started

    def _drop(self, name: str, reason: str, hung: bool = False) -> None:
        """Remove ``name`` from the pool and stop it; a hung engine is killed at once (it cannot shut vLLM
        down). Then whatever of its vLLM processes is left is killed and the shared memory they mapped
        removed (a dead or hung engine leaves both; after a clean shutdown there is nothing to do)."""
        handle = self.engines.pop(name, None)
        log.warning("%s dropped from the rollout pool: %s", name, reason)
        print(f"warning: {name} {reason}; continuing on {len(self.engines)} engine(s)", flush=True)
        if handle is not None:
            _stop(handle, graceful=not hung)
        if name in self._helpers:
            _clean_up(name, *self._helpers.pop(name))
        release(self._pgs.pop(name, None))

    def _lose(self, answer: ActorDied, what: str, consequence: str = "") -> None:
        """An engine died or hung (``ActorHung``) during ``what``: drop it; a replacement is owed at ``heal``."""
        hung = isinstance(answer, ActorHung)
        self.lost.append(answer.name)
        if hung:
            self.hung.append(answer.name)
            how = f"{answer.reason} during {what}: killed"
        else:
            how = f"died during {what} ({answer.error.__class__.__name__})"
        self._drop(answer.name, f"{how}; {consequence}" if consequence else how, hung=hung)

    def _watch(self, names: Sequence[str], must_advance: bool = False) -> StallWatch:
        """A stall watch over ``names`` (``resources.stall_timeout_s`` = 0: one that never finds a hang)."""
        return StallWatch({n: self.engines[n] for n in names}, self.stall_s, must_advance)

    def ready(self, names: Optional[Sequence[str]] = None) -> None:
        """Wait until the engines have loaded their model (no stall watch: a heartbeat cannot be answered
        before the constructor returns), and note the vLLM processes each started."""
        names = list(names) if names is not None else self.names
        helpers = gather([(n, self.engines[n].helper_processes.remote()) for n in names], self.timeout_s,
                         "starting the vLLM engines", RolloutError)
        self._helpers.update(zip(names, helpers))
        self._nodes.update((n, node) for n, (node, _, _) in zip(names, helpers))
        if self.shm_record_dir:
            ips = engine_shm.node_ips()
            engine_shm.remember(self.shm_record_dir, {n: (ips.get(node, ""), files) for n, (node, _, files)
                                                      in zip(names, helpers)})

    def scale_to(self, target: int) -> None:
        """Change the target size; extra engines are stopped now, missing ones start at ``heal``."""
        if target < 1:
            raise RolloutError(f"rollout pool size must be >= 1, got {target}")
        self.target = target
        for name in self.names[target:]:
            self._drop(name, f"stopped (pool scaled to {target})")

    def heal(self, load_weights: Callable[[dict], None]) -> list[str]:
        """Start engines until the pool is back at its target (a death uses one of ``rollout.max_restarts``;
        a scale-up does not), give them the current weights with ``load_weights({name: handle})``, and
        only then add them to the pool. Returns the new engines' names."""
        missing = self.target - len(self.engines)
        if missing <= 0:
            return []
        replacing = min(len(self.lost), missing)
        if replacing > self.restarts_left:
            raise RolloutError(f"engines {', '.join(self.lost)} died and rollout.max_restarts="
                               f"{self.cfg.rollout.max_restarts} replacements are used up")
        self.restarts_left -= replacing
        self.lost = []
        t0 = time.time()
        new = self._start(missing)
        self.ready(list(new))
        load_weights(new)
        print(f"rollout pool: started {', '.join(new)} with the current weights in {time.time() - t0:.1f}s "
              f"({len(self.engines)} engines)", flush=True)
        return list(new)

    # ------------------------------------------------------------------------------ generation
    def _spread(self, method: str, work: list, args: tuple, what: str) -> list:
        """Call ``method(shard, *args)`` on the live engines, shards contiguous and in order; the shards of
        engines that die are redone on the survivors. Returns one answer per (non-empty) shard, in order,
        each paired with its shard: [(shard, answer)]."""
        done: list[tuple[list, object]] = []
        pending = [work]
        while pending:
            todo = [item for part in pending for item in part]
            pending = []
            names = self.names
            if not names:
                raise RolloutError(f"{what}: no rollout engine is left (lost: {', '.join(self.lost)})")
            parts = [todo[a:b] for a, b in shard_bounds(len(todo), len(names))]
            used = [(n, part) for n, part in zip(names, parts) if part]
            answers = gather_tolerating_deaths([(n, getattr(self.engines[n], method).remote(part, *args)) for n, part in used],
                                               self.timeout_s, what, RolloutError, self._watch([n for n, _ in used]))
            for (name, part), answer in zip(used, answers):
                if isinstance(answer, ActorDied):
                    self._lose(answer, what, f"its {len(part)} prompts are redone on the other engines")
                    pending.append(part)
                else:
                    done.append((part, answer))
        return done

    def _spec(self, n: int | None, max_new_tokens: int | None) -> SamplingSpec:
        rc = self.cfg.rollout
        return SamplingSpec(n=n or rc.group_size, max_new_tokens=max_new_tokens or rc.max_new_tokens,
                            temperature=rc.temperature, top_p=rc.top_p)

    def generate(self, problems: Sequence[Problem], prompt_ids: Sequence[Sequence[int]], n: int | None = None,
                 max_new_tokens: int | None = None, on_chunk: Optional[Callable[[list[Episode]], None]] = None,
                 chunk_samples: int = 0) -> tuple[list[Episode], dict]:
        """G samples (or ``n``) for each problem; group i is problems[i]; questions sharded across engines.

        With ``on_chunk``, engines stream samples as they finish (``RolloutEngine.generate_stream``) and
        ``on_chunk(episodes)`` gets every ``chunk_samples`` finished samples of an engine while the rest
        still decode (the driver starts scoring them). The return value is the same.
        """
        spec = self._spec(n, max_new_tokens)
        requests = [(i, p, tuple(ids)) for i, (p, ids) in enumerate(zip(problems, prompt_ids))]
        t0 = time.time()
        lost_before, hung_before = len(self.lost), len(self.hung)
        if on_chunk is None:
            results = [(len(part) * spec.n, answer) for part, answer in self._spread("generate", requests, (spec,), "generation")]
        else:
            results = self._stream(requests, spec, max(1, chunk_samples), on_chunk)
        episodes: list[Episode] = []
        stats = {"time/generate_s": time.time() - t0, "rollout/num_engines": len(self.engines),
                 "rollout/engines_lost": len(self.lost) - lost_before,  # died or hung
                 "rollout/engines_hung": len(self.hung) - hung_before}
        for sequences, (eps, st) in results:
            episodes.extend(eps)
            name = st.get("engine", "?")
            stats[f"worker/{name}/tokens_per_s"] = st["tokens"] / max(st["seconds"], 1e-9)
            stats[f"worker/{name}/sequences"] = stats.get(f"worker/{name}/sequences", 0) + sequences
        episodes.sort(key=lambda e: e.group_id)  # stable: samples keep their order within a group
        return episodes, stats

    def _stream(self, requests: list, spec: SamplingSpec, chunk_samples: int,
                on_chunk: Callable[[list[Episode]], None]) -> list[tuple[int, tuple[list[Episode], dict]]]:
        """Streaming twin of ``_spread("generate")``: chunks go to ``on_chunk`` as they arrive. The samples
        an engine had not delivered when it died or hung (no chunk and no new vLLM step for the stall
        deadline) are drawn again on the survivors (and no others); a late or failed engine raises
        RolloutError naming it. Returns [(samples, (episodes, last stats))] per call."""
        results: list[tuple[int, tuple[list[Episode], dict]]] = []
        todo = [(request, spec.n) for request in requests]
        while todo:
            names = self.names
            if not names:
                raise RolloutError(f"generation: no rollout engine is left (lost: {', '.join(self.lost)})")
            parts = {n: todo[a:b] for n, (a, b) in zip(names, shard_bounds(len(todo), len(names))) if b > a}
            streams = {n: self.engines[n].generate_stream.remote([r for r, _ in part], spec, chunk_samples,
                                                                 [c for _, c in part]) for n, part in parts.items()}
            got: dict[str, list[Episode]] = {n: [] for n in streams}
            last: dict[str, dict] = {n: {"tokens": 0, "seconds": 0.0, "engine": n} for n in streams}
            todo = []
            watch = self._watch(list(streams), must_advance=True)
            deadline = time.monotonic() + self.timeout_s

            def lose(answer: ActorDied) -> None:
                """Give up ``answer.name``'s stream: what it delivered stays, the rest is drawn again."""
                name = answer.name
                del streams[name]
                delivered = Counter(e.group_id for e in got[name])
                redo = [(r, c - delivered[r[0]]) for r, c in parts[name] if c > delivered[r[0]]]
                self._lose(answer, "generation", f"its {sum(c for _, c in redo)} undelivered samples are drawn on "
                                                 "the other engines")
                todo.extend(redo)
                if got[name]:
                    results.append((len(got[name]), (got[name], last[name])))

            def take(name: str) -> None:
                """Read the next chunk of ``name``'s stream, or its end or death."""
                try:
                    eps, last[name] = ray.get(next(streams[name]))
                except StopIteration:
                    del streams[name]
                    watch.forget(name)
                    results.append((len(got[name]), (got[name], last[name])))
                    return
                except ray.exceptions.RayActorError as err:
                    watch.forget(name)
                    lose(ActorDied(name, err))
                    return
                except ray.exceptions.RayTaskError as err:
                    raise task_failure("generation", name, err, RolloutError) from err
                watch.saw(name)
                got[name].extend(eps)
                on_chunk(eps)

            while streams:
                ready = watch.wait(list(streams.values()), deadline)
                if ready:
                    take(next(n for n, s in streams.items() if s is ready[0]))
                for marker in watch.hung():
                    lose(marker)
                if streams and not ready and time.monotonic() >= deadline:
                    raise RolloutError(f"generation: {', '.join(streams)} did not answer within {self.timeout_s:.1f}s")
        return results

    def generate_text(self, prompt_ids: Sequence[Sequence[int]], spec: SamplingSpec) -> list[list[str]]:
        """Texts only (evaluation): ``spec.n`` completions per prompt, prompts sharded across engines."""
        indexed = list(enumerate(prompt_ids))
        results = self._spread("generate_text_indexed", indexed, (spec,), "evaluation")
        by_index = {i: texts for _, answer in results for i, texts in answer}
        return [by_index[i] for i in range(len(prompt_ids))]

    # ------------------------------------------------------------------------------ weights
    def sync_weights_blob(self, blob_ref, version: int, names: Optional[Sequence[str]] = None) -> float:
        """Object-store path: every engine (or ``names``) reloads the safetensors blob behind ``blob_ref``
        (a Ray object reference: works across nodes). Returns the slowest engine's reload seconds."""
        return self._sync("load_weights_blob", blob_ref, version, names)

    def sync_weights_path(self, path: str, version: int, names: Optional[Sequence[str]] = None) -> float:
        """Same-node path: engines on the learner's node reload the file the learner wrote to shared memory.
        Returns the slowest engine's reload seconds."""
        return self._sync("load_weights_path", path, version, names)

    def node_ids(self, names: Sequence[str]) -> dict[str, str]:
        """The Ray node of each engine of ``names`` that is still in the pool (noted at ``ready``, else asked
        once). One that died or hung meanwhile is dropped and left out: the pool heals before the next
        generation."""
        unknown = [n for n in names if n not in self._nodes and n in self.engines]
        if unknown:
            self._nodes.update(self._ask_survivors(unknown, lambda e: e.node_id.remote(), "locating engines"))
        return {n: self._nodes[n] for n in names if n in self.engines and n in self._nodes}

    def _sync(self, method: str, source, version: int, names: Optional[Sequence[str]]) -> float:
        """Returns the slowest engine's own reload time. An engine that dies during a sync is dropped; the
        pool heals before the next generation."""
        names = list(names) if names is not None else self.names
        answers = self._ask_survivors(names, lambda e: getattr(e, method).remote(source, version),
                                      f"weight sync v{version}")
        return max((a for a in answers.values() if isinstance(a, float)), default=0.0)

    def _ask_survivors(self, names: Sequence[str], call: Callable, what: str) -> dict:
        """``call(engine)`` on each engine of ``names``, under the deadline and the stall watch: the answers of
        those that live; one that died or hung is dropped (the pool heals before the next generation), and
        none left is an error."""
        answers = gather_tolerating_deaths([(n, call(self.engines[n])) for n in names], self.timeout_s, what,
                                           RolloutError, self._watch(names))
        alive = {}
        for name, answer in zip(names, answers):
            if isinstance(answer, ActorDied):
                self._lose(answer, what)
            else:
                alive[name] = answer
        if not self.engines:
            raise RolloutError(f"{what}: no rollout engine is left (lost: {', '.join(self.lost)})")
        return alive

    def policy_versions(self, names: Optional[Sequence[str]] = None) -> dict[str, int]:
        """The weights version of each engine of ``names`` (default: all); one that died or hung is dropped
        and left out (the pool heals before the next generation), none left is an error."""
        names = [n for n in (names if names is not None else self.names) if n in self.engines]
        return self._ask_survivors(names, lambda e: e.get_policy_version.remote(), "version check")

    def fingerprints(self) -> list[float]:
        return gather([(n, e.weights_fingerprint.remote()) for n, e in self.engines.items()], self.timeout_s,
                      "fingerprint", RolloutError)

    def shutdown(self) -> None:
        """Stop every engine; one that could not shut vLLM down in time (busy: a stop signal came during
        its generation) is killed, and what its vLLM processes leave is cleaned up as for a dropped one."""
        for name in self.names:
            _stop(self.engines.pop(name))
            if name in self._helpers:
                _clean_up(name, *self._helpers.pop(name))
            release(self._pgs.pop(name, None))


ENGINE_SHUTDOWN_S = 10.0
"""How long an engine gets to stop vLLM's processes before its actor is killed anyway."""


def _stop(handle, graceful: bool = True) -> None:
    """Shut the engine's vLLM processes down, then kill its actor (a dead or stuck engine is killed).
    ``graceful=False`` (a hung engine, which answers nothing): kill it at once."""
    if graceful:
        try:
            ray.get(handle.shutdown.remote(), timeout=ENGINE_SHUTDOWN_S)
        except Exception:  # noqa: BLE001 - dead, stuck or already stopping: the kill below is what counts
            pass
    try:
        ray.kill(handle, no_restart=True)
    except Exception:  # noqa: BLE001 - already dead
        pass


def _clean_up(name: str, node_id: str, processes: Sequence[tuple[int, float]], shm_files: Sequence[str]) -> None:
    """Kill the vLLM processes ``name`` started on ``node_id`` ((pid, start time) pairs, from
    ``RolloutEngine.helper_processes``) and remove the /dev/shm files they mapped: both outlive an engine
    killed without shutting vLLM down."""
    if not processes and not shm_files:
        return
    try:
        killed, removed = clean_up_on(node_id, processes, shm_files, ENGINE_SHUTDOWN_S)
        if killed or removed:
            log.info("%s: killed its vLLM processes %s, removed its shared memory %s", name, killed, removed)
    except Exception as err:  # noqa: BLE001 - the node is gone (its processes with it), unreachable or slow
        log.warning("%s: cleaning up its vLLM processes %s and shared memory %s on node %s not confirmed: %s",
                    name, [pid for pid, _ in processes], list(shm_files), node_id, err)
