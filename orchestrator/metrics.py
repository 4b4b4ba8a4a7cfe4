"""Per-step metrics: one progress line, one JSON line in metrics.jsonl, Ray dashboard gauges, and
the optional TensorBoard / W&B copies (``orchestrator.metric_sinks``).

Names are namespaced (``reward/mean``, ``loss/kl``, ``time/generate_s``) and exported to Prometheus
through ``ray.util.metrics`` with ``/`` replaced by ``_`` and a ``grpo_`` prefix.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Optional, Sequence

from orchestrator.metric_sinks import scalars

log = logging.getLogger(__name__)

PROGRESS_KEYS = (
    ("reward/mean", "reward {:.3f}"), ("reward/accuracy", "acc {:.3f}"), ("loss/kl", "kl {:.4f}"),
    ("loss/loss", "loss {:+.4f}"), ("loss/clip_frac", "clip {:.3f}"), ("response/length_mean", "len {:.1f}"),
    ("rollout/tokens_per_s", "{:.0f} tok/s"), ("time/generate_s", "gen {:.1f}s"), ("time/reward_s", "rew {:.1f}s"),
    ("time/learn_s", "learn {:.1f}s"), ("time/sync_s", "sync {:.1f}s"), ("eval/accuracy", "eval acc {:.3f}"),
)


WORKER_PREFIX = "worker/"
"""``worker/<actor>/...`` keys go to metrics.jsonl only; orchestrator.worker_metrics exports them."""


def prometheus_name(key: str) -> str:
    return "grpo_" + "".join(c if c.isalnum() else "_" for c in key)


class MetricsLogger:
    """``log`` each step's figures; ``close`` (or leaving a ``with`` block) flushes and closes the
    ``sinks`` (``metric_sinks.open_sinks``), which get every numeric figure of each record."""

    def __init__(self, out_dir: str, total_steps: int, log_every: int = 1, ray_metrics: bool = True,
                 tags: Optional[dict] = None, echo=print, sinks: Sequence = ()):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.total_steps, self.log_every = total_steps, log_every
        self.ray_metrics, self.tags = ray_metrics, dict(tags or {})
        self._gauges: dict = {}
        self.echo = echo
        self.sinks = list(sinks)
        self._t0 = time.time()

    def _export(self, record: dict) -> None:
        from ray.util.metrics import Gauge

        for key, value in record.items():
            if key.startswith(WORKER_PREFIX):  # per-worker figures: the workers export them live, tagged
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                continue
            if key not in self._gauges:
                self._gauges[key] = Gauge(prometheus_name(key), description=key, tag_keys=tuple(self.tags))
            self._gauges[key].set(float(value), tags=self.tags)

    def log(self, step: int, metrics: dict) -> dict:
        record = {"step": step, "time": round(time.time() - self._t0, 3), **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if self.ray_metrics:
            try:
                self._export(record)
            except Exception as e:  # noqa: BLE001 - the dashboard is optional, training is not
                log.warning("could not export Ray metrics: %s", e)
                self.ray_metrics = False
        if self.sinks:
            values = scalars(record)
            for sink in list(self.sinks):
                try:
                    sink.write(step, values)
                except Exception as e:  # noqa: BLE001 - a copy of metrics.jsonl; training goes on without it
                    log.warning("%s off after step %d: %s", type(sink).__name__, step, e)
                    self.sinks.remove(sink)
                    self._close(sink, exit_code=1)
        if step % self.log_every == 0 or step == self.total_steps:
            parts = [fmt.format(record[k]) for k, fmt in PROGRESS_KEYS if k in record]
            self.echo(f"[step {step}/{self.total_steps}] " + " | ".join(parts))
            sys.stdout.flush()
        return record

    def close(self, exit_code: int = 0) -> None:
        """Flush and close the sinks (a W&B run ends with ``exit_code``: non-zero marks it failed).
        Idempotent: a second call does nothing."""
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            self._close(sink, exit_code)

    @staticmethod
    def _close(sink, exit_code: int) -> None:
        try:
            sink.close(exit_code)
        except Exception as e:  # noqa: BLE001 - the other sinks still get closed
            log.warning("could not close %s: %s", type(sink).__name__, e)

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(0 if exc_type is None else 1)


def read_metrics(out_dir: str) -> list[dict]:
    return [record for _, record in read_jsonl(os.path.join(out_dir, "metrics.jsonl"))]


def read_jsonl(path: str) -> list[tuple[str, dict]]:
    """(line, record) for every record of a run's JSONL log (metrics.jsonl, samples.jsonl), in order;
    each line ends with a newline. A line that is not a JSON object is dropped with a warning: a torn
    last line is what a SIGKILL or a full disk mid-append leaves (and a run appending after it glues
    its first record to it, so such a line can also sit mid-file)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")  # the last piece: what follows the last newline ('' unless torn)
    out, bad = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            out.append((line + "\n", record))
        else:
            bad.append(number)
    if bad == [len(lines)]:
        log.warning("%s: dropped its torn last line (line %d, %d characters): a write cut short",
                    path, bad[0], len(lines[-1]))
    elif bad:
        log.warning("%s: dropped %d unreadable lines (%s)", path, len(bad), ", ".join(map(str, bad[:10])))
    return out
