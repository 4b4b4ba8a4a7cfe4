"""Where a vLLM engine's decoding time goes on CPU, per dtype, next to what the machine can do.

    python bench/decode_profile.py --dtype float32 bfloat16 --out docs/bench/decode_profile.json

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, all cores for decoding as
the rollout default ``rollout.cpu_reserved_cores=0`` gives them) so ``torch.profiler`` sees its ops.
Every sequence decodes to the full length (``ignore_eos``), so each decode step carries all rows.
Reported per dtype and mode (``eager``, the rollout default ``rollout.enforce_eager=true``, or
``compiled``, vLLM's torch.compile path): tokens/s and milliseconds per decode step, the step split
into matmuls, attention, sampling and the rest (plus the time outside any op: scheduling and
Python), and two floors for the matmuls, measured in the same process before the engine starts: a
memcpy of the weights they stream each step, and the FLOPs of a step at the speed of one large
``torch.mm`` in that dtype.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

from bench.results import rows_in_subprocesses, save_result  # noqa: E402
from bench.weight_sync import memcpy_seconds  # noqa: E402

# op-name fragments of each part of a decode step (self CPU time of vLLM's CPU kernels and aten ops)
OP_GROUPS = {
    "matmul": ("onednn_mm", "weight_packed_linear", "aten::mm", "aten::addmm", "aten::bmm"),
    "attention": ("attention", "reshape_and_cache", "kv_cache"),
    "sampling": ("gumbel", "softmax", "sampl", "topk", "sort", "multinomial"),
}


def op_group(name: str) -> str:
    """The part of a decode step an op belongs to (``other`` for norms, rotary, elementwise, copies)."""
    low = name.lower()
    for group, fragments in OP_GROUPS.items():
        if any(f in low for f in fragments):
            return group
    return "other"


def mm_gflops(dtype, size: int = 1024, repeats: int = 5) -> float:
    """Speed of one large square matmul in ``dtype`` on all cores: what the matmuls could reach."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(times) / 1e9


def linear_params(model_path: str) -> tuple[int, int]:
    """(parameters the decode matmuls multiply by each step, decoder layers): every 2-D weight except the
    input embedding, which is counted once more as the LM head when the two are tied."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    n = sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2 and "embed_tokens" not in name)
    if model.config.tie_word_embeddings:
        n += model.get_input_embeddings().weight.numel()
    return n, model.config.num_hidden_layers


def profile_dtype(model_path: str, dtype_name: str, mode: str, prompts: int, group_size: int, tokens: int,
                  repeats: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from vllm import LLM, SamplingParams

    dtype = getattr(torch, dtype_name)
    params, layers = linear_params(model_path)
    rows = prompts * group_size
    weight_bytes = params * torch.tensor([], dtype=dtype).element_size()
    floors = {"weights_memcpy_ms": memcpy_seconds(weight_bytes) * 1e3, "mm_gflops": mm_gflops(dtype)}
    floors["matmul_flops_ms"] = 2 * params * rows / (floors["mm_gflops"] * 1e9) * 1e3
    t0 = time.perf_counter()
    llm = LLM(model=model_path, dtype=dtype_name, enforce_eager=mode == "eager", gpu_memory_utilization=0.1,
              max_model_len=256, enable_prefix_caching=True)
    startup = time.perf_counter() - t0
    questions = [f"What is {a} + {a + 2}? Give only the final number." for a in range(prompts)]
    params_ = SamplingParams(n=group_size, max_tokens=tokens, ignore_eos=True, temperature=1.0, logprobs=0)
    llm.generate(questions, params_, use_tqdm=False)  # warm-up
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = llm.generate(questions, params_, use_tqdm=False)
        walls.append(time.perf_counter() - t0)
    produced = sum(len(c.token_ids) for o in out for c in o.outputs)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        llm.generate(questions, params_, use_tqdm=False)
        profiled_wall = time.perf_counter() - t0
    parts = {g: 0.0 for g in (*OP_GROUPS, "other")}
    for event in prof.key_averages():
        parts[op_group(event.key)] += event.self_cpu_time_total / 1e6
    in_ops = sum(parts.values())
    parts["outside_ops"] = max(0.0, profiled_wall - in_ops)
    wall = statistics.median(walls)
    row = {"dtype": dtype_name, "mode": mode, "engine_start_s": startup, "rows": rows, "tokens": produced,
           "wall_s": wall, "tokens_per_s": produced / wall, "ms_per_step": wall / tokens * 1e3,
           "linear_params": params, "layers": layers,
           "weight_bytes": weight_bytes, **floors,
           "profiled_ms_per_step": {k: v / tokens * 1e3 for k, v in parts.items()}}
    matmul_ms = row["profiled_ms_per_step"]["matmul"]
    row["matmul_gflops"] = 2 * params * rows / (matmul_ms / 1e3) / 1e9
    row["matmul_share"] = parts["matmul"] / profiled_wall
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct"))
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--modes", nargs="+", choices=["eager", "compiled"], default=["eager", "compiled"])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=os.path.join(ROOT, "docs/bench/decode_profile.json"))
    a = p.parse_args()
    if len(a.dtype) * len(a.modes) > 1:  # each point in its own process
        common = ["--model", a.model, "--prompts", str(a.prompts), "--group-size", str(a.group_size),
                  "--tokens", str(a.tokens), "--repeats", str(a.repeats)]
        rows = rows_in_subprocesses(__file__, [[*common, "--dtype", dtype, "--modes", mode]
                                               for dtype in a.dtype for mode in a.modes])
        save_result(a.out, {"rows": rows, "settings": vars(a)})
        return
    r = profile_dtype(a.model, a.dtype[0], a.modes[0], a.prompts, a.group_size, a.tokens, a.repeats)
    ms = r["profiled_ms_per_step"]
    print(f"{r['dtype']} {r['mode']} (engine start {r['engine_start_s']:.0f} s): {r['rows']} rows, "
          f"{r['tokens_per_s']:.0f} tok/s, {r['ms_per_step']:.0f} ms per decode step "
          f"(profiled: matmul {ms['matmul']:.0f}, attention {ms['attention']:.0f}, sampling {ms['sampling']:.0f}, "
          f"other ops {ms['other']:.0f}, outside ops {ms['outside_ops']:.0f}); matmuls at {r['matmul_gflops']:.0f} "
          f"GFLOP/s vs {r['mm_gflops']:.0f} for one large torch.mm; a memcpy of the "
          f"{r['weight_bytes'] / 2**20:.0f} MiB they stream takes {r['weights_memcpy_ms']:.0f} ms", flush=True)
    save_result(a.out, {"rows": [r], "settings": vars(a)})


if __name__ == "__main__":
    main()
