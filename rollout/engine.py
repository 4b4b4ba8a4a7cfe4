"""One vLLM engine that samples groups of outputs and takes new weights from the learner.

``RolloutEngine`` is plain Python (usable without Ray, e.g. by ``grpo eval``); ``rollout.group``
wraps it in a Ray actor. Prompts arrive as token ids (tokenised once by the driver), and every
sample comes back as an ``Episode`` with its token ids, the sampler's per-token logprobs, the
finish reason and the policy version that produced it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from learner.weight_sync import shm_dir
from orchestrator.types import Episode, Problem

log = logging.getLogger(__name__)

EXTENSION = "rollout.worker_extension.WeightSyncExtension"
CPU_KV_CACHE_GB = 1.0
"""KV cache of an engine without a GPU when ``kv_cache_gb`` is unset. vLLM's CPU backend would
otherwise reserve ``gpu_memory_utilization`` x the memory of the engine's NUMA node for weights plus
cache, and that node can be much smaller than the machine (9.5 of 24 GiB on one of our VMs), so the
same fraction fails on one machine and wastes memory on another."""


def kv_cache_bytes(kv_cache_gb: Optional[float], on_gpu: bool) -> Optional[int]:
    """vLLM's ``kv_cache_memory_bytes``: the configured size, else CPU_KV_CACHE_GB without a GPU,
    else None (``gpu_memory_utilization`` decides)."""
    if kv_cache_gb is None and not on_gpu:
        kv_cache_gb = CPU_KV_CACHE_GB
    return None if kv_cache_gb is None else int(kv_cache_gb * 2**30)


@dataclass(frozen=True)
class SamplingSpec:
    """What the driver asks of one generation call (kept free of vLLM types so it pickles cheaply)."""

    n: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0


class RolloutEngine:
    """Owns one ``vllm.LLM``; generates groups and reloads weights in place."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "bfloat16",
        max_model_len: int = 2048,
        gpu_memory_utilization: float = 0.15,
        kv_cache_gb: Optional[float] = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = True,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        trust_remote_code: bool = False,
        weight_transfer_backend: Optional[str] = None,
        name: str = "rollout-engine",
    ):
        import torch
        from vllm import LLM

        from orchestrator.worker_metrics import WorkerGauges

        self.name = name
        self.policy_version = 0
        self._streams = 0
        self.steps = 0  # vLLM engine steps taken by streamed generation: the progress ``heartbeat`` reports
        self.gauges = WorkerGauges("rollout", name)
        kwargs = dict(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            trust_remote_code=trust_remote_code,
            worker_extension_cls=EXTENSION,
            # Logprobs of the distribution actually sampled from (after temperature), so they are
            # comparable with the learner's logits / temperature.
            logprobs_mode="processed_logprobs",
        )
        kv_bytes = kv_cache_bytes(kv_cache_gb, torch.cuda.is_available())
        if kv_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = kv_bytes
        if weight_transfer_backend:
            kwargs["weight_transfer_config"] = {"backend": weight_transfer_backend}
        t0 = time.time()
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        log.info("%s: loaded %s in %.1fs", name, model_path, time.time() - t0)
        self._warm_up()

    def _warm_up(self) -> None:
        """One sampled token (with its logprob, as in training) of a short prompt, so that the first real
        vLLM step is not the slow one (4-9 s on a CPU, against ~0.1 s for the next ones: kernels and
        buffers set up on first use). It is paid here, at start-up, rather than inside a stream the stall
        watch measures. Every engine draws it the same way, so runs stay reproducible from their seed."""
        from vllm import TokensPrompt

        t0 = time.time()
        self.llm.generate([TokensPrompt(prompt_token_ids=[0, 1, 2])],
                          self._sampling_params(SamplingSpec(n=2, max_new_tokens=1, temperature=1.0, top_p=1.0)),
                          use_tqdm=False)
        log.info("%s: first vLLM step (warm-up) took %.1fs", self.name, time.time() - t0)

    # ----------------------------------------------------------------------------- generation
    def _sampling_params(self, spec: SamplingSpec):
        from vllm import SamplingParams

        return SamplingParams(
            n=spec.n,
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=spec.max_new_tokens,
            logprobs=0,  # the sampled token's own logprob
        )

    def _group(self, request: tuple[int, Problem, Sequence[int]], out) -> list[Episode]:
        """The episodes of one finished vLLM request (its ``n`` samples of one question), in sample order."""
        group_id, problem, prompt_ids = request
        episodes = []
        for sample in sorted(out.outputs, key=lambda s: s.index):
            token_ids = tuple(sample.token_ids)
            logprobs = tuple(float(step[tid].logprob) for step, tid in zip(sample.logprobs, token_ids))
            episodes.append(Episode(
                group_id=group_id, problem=problem, prompt_token_ids=tuple(prompt_ids), response_token_ids=token_ids,
                sampler_logprobs=logprobs, response_text=sample.text, finish_reason=sample.finish_reason or "length",
                policy_version=self.policy_version,
            ))
        return episodes

    def generate(
        self, requests: Sequence[tuple[int, Problem, Sequence[int]]], spec: SamplingSpec
    ) -> tuple[list[Episode], dict]:
        """Sample ``spec.n`` outputs for each (group_id, problem, prompt_token_ids); groups stay contiguous."""
        from vllm import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for _, _, ids in requests]
        self.gauges.started(len(prompts) * spec.n)
        t0 = time.time()
        outputs = self.llm.generate(prompts, self._sampling_params(spec), use_tqdm=False)
        seconds = time.time() - t0
        episodes = [e for request, out in zip(requests, outputs) for e in self._group(request, out)]
        tokens = sum(len(e.response_token_ids) for e in episodes)
        self.gauges.finished(tokens, seconds)
        return episodes, {"tokens": tokens, "seconds": seconds, "prompts": len(requests), "engine": self.name}

    def generate_stream(
        self, requests: Sequence[tuple[int, Problem, Sequence[int]]], spec: SamplingSpec, chunk_samples: int,
        counts: Optional[Sequence[int]] = None,
    ) -> Iterator[tuple[list[Episode], dict]]:
        """``generate`` that hands over samples as they finish: yields (episodes, stats) each time
        ``chunk_samples`` more samples are complete (a chunk may hold more; the last may hold fewer), so
        the caller can score them while the rest are still decoding. ``counts[i]`` samples are drawn for
        request i (default ``spec.n``). Each sample is its own vLLM request (what ``n`` > 1 fans out to
        inside vLLM, so batching and prefix caching are the same), all added at once and run by the
        engine's ``step`` loop, the loop ``LLM.generate`` runs. Within a group, samples come in the order
        they finish. ``stats`` are cumulative. Closing the stream early aborts what is still decoding.
        """
        from vllm import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = self._sampling_params(dataclasses.replace(spec, n=1))
        params.output_kind = RequestOutputKind.FINAL_ONLY
        engine, ready, tokens = self.llm.llm_engine, [], 0
        self._streams += 1
        by_id = {f"{self.name}-stream{self._streams}-{k}-{j}": request for k, request in enumerate(requests)
                 for j in range(counts[k] if counts is not None else spec.n)}
        self.gauges.started(len(by_id))
        t0 = time.time()
        try:
            for request_id, (_, _, ids) in by_id.items():
                engine.add_request(request_id, TokensPrompt(prompt_token_ids=list(ids)), params)
            while by_id:
                outputs = engine.step()
                self.steps += 1
                for out in outputs:
                    if out.finished and out.request_id in by_id:
                        sample = self._group(by_id.pop(out.request_id), out)
                        ready.extend(sample)
                        tokens += sum(len(e.response_token_ids) for e in sample)
                if ready and (len(ready) >= chunk_samples or not by_id):
                    yield ready, {"tokens": tokens, "seconds": time.time() - t0, "prompts": len(requests),
                                  "engine": self.name}
                    ready = []
                if by_id and not engine.has_unfinished_requests():
                    raise RuntimeError(f"{self.name}: vLLM finished without answering requests {sorted(by_id)}")
        finally:
            if by_id:  # the caller stopped listening (or an error): drop what is still decoding
                engine.abort_request(list(by_id), internal=False)
        self.gauges.finished(tokens, time.time() - t0)

    def generate_text(self, prompts: Sequence[Sequence[int]], spec: SamplingSpec) -> list[list[str]]:
        """Plain texts for evaluation: ``spec.n`` completions per prompt (temperature 0 = greedy)."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(n=spec.n, temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_new_tokens)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        return [[s.text for s in sorted(o.outputs, key=lambda s: s.index)] for o in outs]

    def generate_text_indexed(self, prompts: Sequence[tuple[int, Sequence[int]]], spec: SamplingSpec) -> list[tuple[int, list[str]]]:
        """``generate_text`` over (index, prompt ids) pairs, answering (index, texts): lets the pool redo
        a dead engine's share elsewhere and still put every answer in its place."""
        self.gauges.started(len(prompts) * spec.n)
        t0 = time.time()
        texts = self.generate_text([ids for _, ids in prompts], spec)
        self.gauges.finished(0, time.time() - t0)
        return [(i, t) for (i, _), t in zip(prompts, texts)]

    def score_sequence(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> list[float]:
        """The engine's logprob of each response token given everything before it (teacher forcing)."""
        from vllm import SamplingParams, TokensPrompt

        ids = list(prompt_ids) + list(response_ids)
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
        scored = out.prompt_logprobs[len(prompt_ids):]
        return [float(pos[tid].logprob) for pos, tid in zip(scored, response_ids)]

    # ---------------------------------------------------------------------------- weight sync
    def load_weights_blob(self, blob: bytes, version: int) -> float:
        """CPU path: ``blob`` is a safetensors file's bytes (it arrives through Ray's object store, so it
        works across nodes); it is written to shared memory and reloaded by every worker of this engine."""
        t0 = time.time()
        fd, path = tempfile.mkstemp(prefix=f"grpo-weights-v{version}-", suffix=".safetensors", dir=shm_dir())
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            self.load_weights_path(path, version)
        finally:
            os.unlink(path)
        return time.time() - t0

    def load_weights_path(self, path: str, version: int) -> float:
        """Same-node path: the learner wrote the weights into shared memory on this node; every worker of
        this engine reloads them from there (no copy through the object store)."""
        t0 = time.time()
        self.llm.collective_rpc("load_weights_from_file", args=(path,))
        self._after_update(version)
        return time.time() - t0

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def _after_update(self, version: int) -> None:
        # KV blocks computed with the old weights must never be reused.
        self.llm.reset_prefix_cache()
        self.policy_version = version

    def weights_fingerprint(self) -> float:
        return float(self.llm.collective_rpc("weights_fingerprint")[0])

    # ------------------------------------------- GPU path: vLLM's NCCL weight-transfer engine
    # These names are what vllm.distributed.weight_transfer.RayVLLMWeightSyncClient calls on us.
    def init_weight_transfer_engine(self, request) -> None:
        self.llm.collective_rpc("init_weight_transfer_engine", args=(request.init_info,))

    def start_weight_update(self) -> None:
        self.llm.collective_rpc("start_weight_update")

    def update_weights(self, request) -> None:
        self.llm.collective_rpc("update_weights", args=(request.update_info,))

    def finish_weight_update(self) -> None:
        self.llm.collective_rpc("finish_weight_update")
        self.llm.reset_prefix_cache()

    def update_weight_version(self, version: str) -> None:
        self._after_update(int(version))

    def shutdown_weight_transfer_engine(self) -> None:
        self.llm.collective_rpc("shutdown_weight_transfer_engine")

    def get_policy_version(self) -> int:
        return self.policy_version

    def ping(self) -> str:
        return self.name

    def heartbeat(self) -> int:
        """Progress so far (``steps``); the pool asks on the actor's heartbeat thread while generation runs
        (``orchestrator.remote.StallWatch``): a stream whose engine stops stepping is hung."""
        return self.steps

    def helper_processes(self) -> tuple[str, list[tuple[int, float]], list[str]]:
        """(node id, [(pid, start time)], /dev/shm files they map) of the processes vLLM started for this
        engine (engine core, workers) and of their shared-memory message queues: the pool kills the
        processes itself when it has to kill a hung engine, which cannot shut vLLM down, and removes the
        files of an engine that did not shut down cleanly (they would hold 400 MiB of RAM each time)."""
        import psutil

        from orchestrator.remote import shm_files_of

        children = psutil.Process().children(recursive=True)
        return self.node_id(), [(p.pid, p.create_time()) for p in children], shm_files_of([p.pid for p in children])

    def shutdown(self) -> None:
        """Stop vLLM's engine-core process and its workers now (the pool calls this before it kills
        the actor, so no EngineCore outlives its engine even if killing the actor left it behind)."""
        self.llm.llm_engine.engine_core.shutdown()
