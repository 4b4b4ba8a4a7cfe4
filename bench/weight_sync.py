"""Weight sync: seconds per learner -> engine sync vs. model bytes, next to a plain memory copy of
the same bytes (the physical floor on one machine).

    python bench/weight_sync.py --layers 8 15 30 --out docs/bench/weight_sync.json

For each size, a copy of the tiny model cut to N layers is trained by nothing: a real DeepSpeed
``LearnerWorker`` actor and a real vLLM ``RolloutGroup`` (one engine) are started on a local Ray,
and the driver's own sync path (``Trainer.sync_weights``) runs ``--repeats`` times.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.results import save_result  # noqa: E402


def cut_model(src: str, layers: int, out_dir: str) -> str:
    """The tiny model with only its first ``layers`` decoder layers (same width, same tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.join(out_dir, f"layers_{layers}")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(src).save_pretrained(path)
    return path


def memcpy_seconds(nbytes: int, repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(model: str, repeats: int, mode: str) -> dict:
    import ray

    from orchestrator.config import load_config
    from orchestrator.driver import Trainer

    cfg = load_config(os.path.join(ROOT, "configs/tiny_cpu.yaml"), [
        f"model.path={model}", "data.questions_per_step=1", "rollout.max_new_tokens=8",
        f"resources.weight_sync={mode}", f"output.dir={tempfile.mkdtemp(prefix='bench-sync-')}",
        "output.checkpoint_every=0", "logging.ray_metrics=false", "logging.dashboard=false"])
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        times, parts = [], []
        for version in range(1, repeats + 1):
            times.append(trainer.sync_weights(version))
            parts.append(dict(trainer.sync_parts))
        versions = trainer.rollout.policy_versions()
        assert set(versions.values()) == {repeats}, versions
        nbytes = trainer._get(trainer.learner.weights_nbytes(trainer.rollout.dtype), "sizing the weights")
    finally:
        trainer.shutdown()
        ray.shutdown()
    out = {"sync_s": statistics.median(times), "sync_runs": times, "bytes": nbytes, "mode": trainer.sync_mode}
    for key in ("write_s", "engine_load_s"):  # where the time goes (shm path)
        values = [p[key] for p in parts if key in p]
        if values:
            out[key] = statistics.median(values)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct"))
    p.add_argument("--layers", type=int, nargs="+", default=[8, 15, 30])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--mode", default="auto", help="resources.weight_sync to measure")
    p.add_argument("--out", default=os.path.join(ROOT, "docs/bench/weight_sync.json"))
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        for layers in a.layers:
            model = cut_model(a.model, layers, tmp)
            row = {"layers": layers, **measure(model, a.repeats, a.mode)}
            row["memcpy_s"] = memcpy_seconds(row["bytes"])
            row["ratio_to_memcpy"] = row["sync_s"] / row["memcpy_s"]
            rows.append(row)
            parts = ", ".join(f"{k} {row[k]:.3f}s" for k in ("write_s", "engine_load_s") if k in row)
            print(f"sync {row['bytes'] / 2**20:.0f} MiB ({layers} layers): {row['sync_s']:.3f}s ({parts}), memcpy "
                  f"{row['memcpy_s']:.3f}s, x{row['ratio_to_memcpy']:.1f}", flush=True)
    save_result(a.out, {"rows": rows, "settings": vars(a)})


if __name__ == "__main__":
    main()
