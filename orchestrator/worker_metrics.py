"""Live per-worker gauges for the Ray dashboard, set by the workers themselves.

``grpo_worker_queue_depth`` (sequences a worker has been handed and not yet finished),
``grpo_worker_busy`` (1 while working) and ``grpo_worker_tokens_per_s`` (throughput of its last
call), tagged ``role`` (rollout | reward) and ``worker`` (the actor's name). Outside a Ray worker
(e.g. ``grpo eval`` in-process) the gauges are silently off.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

NAMES = ("grpo_worker_queue_depth", "grpo_worker_busy", "grpo_worker_tokens_per_s")


class WorkerGauges:
    def __init__(self, role: str, worker: str):
        self.tags = {"role": role, "worker": worker}
        self._gauges = None
        try:
            import ray

            if ray.is_initialized():
                from ray.util.metrics import Gauge

                self._gauges = {name: Gauge(name, description=name.replace("_", " "), tag_keys=("role", "worker"))
                                for name in NAMES}
        except Exception as e:  # noqa: BLE001 - the dashboard is optional, the work is not
            log.warning("worker gauges off: %s", e)

    def _set(self, name: str, value: float) -> None:
        if self._gauges is not None:
            try:
                self._gauges[name].set(float(value), tags=self.tags)
            except Exception as e:  # noqa: BLE001
                log.warning("worker gauge %s: %s", name, e)
                self._gauges = None

    def started(self, queued: int) -> None:
        self._set("grpo_worker_queue_depth", queued)
        self._set("grpo_worker_busy", 1)

    def finished(self, tokens: int, seconds: float) -> None:
        self._set("grpo_worker_queue_depth", 0)
        self._set("grpo_worker_busy", 0)
        if tokens:
            self._set("grpo_worker_tokens_per_s", tokens / max(seconds, 1e-9))
