"""Where an engine's weight reload goes on CPU: vLLM's ``reload_weights`` profiled in-process.

    python bench/reload_profile.py --dtype float32 bfloat16 --out docs/bench/reload_profile.json

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so cProfile sees inside
the reload that ``WeightSyncExtension.load_weights_from_file`` triggers: the same safetensors file in
/dev/shm, read as views of the mapped file. Reported per dtype: the learner-side write, the reload,
and the two parts of the reload that touch every byte (oneDNN weight packing and the copies into
fresh parameters), each next to a memcpy of the model's bytes. Those two alone bound what any sync
through vLLM's supported reload can reach on CPU.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

from bench.results import rows_in_subprocesses, save_result  # noqa: E402
from bench.weight_sync import memcpy_seconds  # noqa: E402


def _builtin_seconds(stats: pstats.Stats, name: str) -> float:
    """Total time of the built-ins whose name contains ``name`` (e.g. 'create_onednn_mm_handler')."""
    return sum(row[2] for (_, _, fn), row in stats.stats.items() if name in fn)


def profile_dtype(model_path: str, dtype_name: str, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from vllm import LLM

    from learner.weight_sync import mapped_safetensors, write_safetensors

    dtype = getattr(torch, dtype_name)
    llm = LLM(model=model_path, dtype=dtype_name, enforce_eager=True, gpu_memory_utilization=0.1, max_model_len=512)
    runner = llm.llm_engine.model_executor.driver_worker.worker.model_runner
    named = [(n, p.detach().to(dtype)) for n, p in
             AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).named_parameters(remove_duplicate=False)]
    path = f"/dev/shm/grpo-reload-profile-{os.getpid()}.safetensors"
    try:
        nbytes = write_safetensors(named, path, dtype)
        writes, reloads = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            write_safetensors(named, path, dtype)
            writes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            runner.reload_weights(weights_iterator=iter(mapped_safetensors(path)), is_checkpoint_format=True)
            reloads.append(time.perf_counter() - t0)
        profiler = cProfile.Profile()
        profiler.enable()
        runner.reload_weights(weights_iterator=iter(mapped_safetensors(path)), is_checkpoint_format=True)
        profiler.disable()
    finally:
        if os.path.exists(path):
            os.unlink(path)
    stats = pstats.Stats(profiler)
    memcpy = memcpy_seconds(nbytes)
    row = {"dtype": dtype_name, "bytes": nbytes, "memcpy_s": memcpy, "write_s": statistics.median(writes),
           "reload_s": statistics.median(reloads), "profiled_reload_s": stats.total_tt,
           "onednn_pack_s": _builtin_seconds(stats, "create_onednn_mm_handler"),
           "sgl_pack_s": _builtin_seconds(stats, "convert_weight_packed"),
           "param_copy_s": _builtin_seconds(stats, "method 'copy_'")}
    row["floor_ratio"] = (row["onednn_pack_s"] + row["sgl_pack_s"] + row["param_copy_s"]) / memcpy
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct"))
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(ROOT, "docs/bench/reload_profile.json"))
    a = p.parse_args()
    if len(a.dtype) > 1:  # each dtype in its own process
        rows = rows_in_subprocesses(__file__, [["--model", a.model, "--dtype", dtype, "--repeats", str(a.repeats)]
                                               for dtype in a.dtype])
        save_result(a.out, {"rows": rows, "settings": vars(a)})
        return
    r = profile_dtype(a.model, a.dtype[0], a.repeats)
    print(f"{a.dtype[0]}: {r['bytes'] / 2**20:.0f} MiB, memcpy {r['memcpy_s']:.3f}s, write {r['write_s']:.3f}s, reload "
          f"{r['reload_s']:.3f}s (profiled {r['profiled_reload_s']:.3f}s: oneDNN pack {r['onednn_pack_s']:.3f}s, "
          f"small-GEMM pack {r['sgl_pack_s']:.3f}s, copies into parameters {r['param_copy_s']:.3f}s) -> "
          f"pack + copies alone = {r['floor_ratio']:.1f}x memcpy", flush=True)
    save_result(a.out, {"rows": [r], "settings": vars(a)})


if __name__ == "__main__":
    main()
