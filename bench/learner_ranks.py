"""The learner step with its cores split over DeepSpeed ranks: N=1 rank x C cores against N ranks x C/N.

    python bench/learner_ranks.py --layouts 1x2 2x1

Each layout is a real ``LearnerGroup`` (Ray actors, gloo on CPU) training the same batches: the task's
prompts with random responses of lengths drawn from [--min-response, --max-response], as in
bench/learner_step.py. Each row gives the median step time over the steps after the first, and the
gradient norms, which show that every layout applies the same update.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.learner_step import make_episodes  # noqa: E402
from bench.results import save_result  # noqa: E402


def cpu_description() -> str:
    """The CPU's model name and whether it computes bf16 natively (which decides fp32 vs bf16 speed)."""
    flags, name = "", platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    native = [f for f in ("amx_bf16", "avx512_bf16") if f" {f}" in flags]
    return f"{name or 'unknown CPU'}, {os.cpu_count()} cores, native bf16: {', '.join(native) or 'none'}"


def run_layout(ranks: int, cores: int, a, batches) -> dict:
    import ray

    from orchestrator.config import load_config
    from orchestrator.learner_group import LearnerGroup
    from orchestrator.memory_plan import load_shape, make_plan
    from orchestrator.types import Batch

    cfg = load_config(os.path.join(ROOT, "configs", "tiny_cpu.yaml"), [
        f"model.path={a.model}", f"model.dtype={a.precision}", f"data.questions_per_step={a.questions}",
        f"rollout.max_new_tokens={a.max_response}", f"rollout.group_size={a.group_size}", f"learner.num_ranks={ranks}", f"learner.num_cpus={cores}",
        f"learner.micro_batch_size={a.micro_batch}", "learner.lr=1e-5", "seed=0", "resources.timeout_s=1800"])
    ray.init(address="local", num_cpus=ranks * cores, include_dashboard=False, log_to_driver=False)
    try:
        group = LearnerGroup(cfg, batch_size=a.questions * a.group_size, run_id=f"bench-{ranks}x{cores}")
        group.get(group.ping(), "starting the learner")
        steps = []
        for step, (episodes, _) in enumerate(batches, start=1):
            t0 = time.time()
            metrics = group.get(group.train_step(Batch(episodes, a.group_size), step), f"step {step}")
            steps.append({"step_s": time.time() - t0, "grad_norm": metrics["loss/grad_norm"]})
            print(f"{ranks}x{cores}: step {step} {steps[-1]['step_s']:.2f}s, grad norm {metrics['loss/grad_norm']:.5f}",
                  file=sys.stderr, flush=True)
        peaks = ray.get([rank.peak_memory_gb.remote() for rank in group.ranks], timeout=60)
        prompt = max(len(e.prompt_token_ids) for episodes, _ in batches for e in episodes)
        plan = make_plan(cfg, load_shape(a.model), prompt_len=prompt)["roles"]["learner"]
        group.shutdown()
    finally:
        ray.shutdown()
    timed = steps[1:] or steps
    return {"layout": f"{ranks}x{cores}", "ranks": ranks, "cores_per_rank": cores,
            "zero_stage": cfg.learner.zero_stage if cfg.learner.zero_stage is not None else (0 if ranks == 1 else 2),
            "step_s": round(statistics.median(s["step_s"] for s in timed), 3),
            "steps_s": [round(s["step_s"], 3) for s in steps], "grad_norms": [round(s["grad_norm"], 5) for s in steps],
            "peak_rss_gb": round(max(p["peak_rss_gb"] for p in peaks), 2), "plan_gb": round(plan["need_gb"], 2),
            "plan_parts_gb": {k: round(v, 3) for k, v in plan["parts_gb"].items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layouts", nargs="+", default=["1x2", "2x1"], help="RANKSxCORES each")
    p.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--questions", "-Q", type=int, default=4)
    p.add_argument("--group-size", "-G", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--min-response", type=int, default=5)
    p.add_argument("--max-response", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="steps per layout; the first is left out of the median")
    p.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct"))
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "learner_ranks.json"))
    a = p.parse_args()

    from transformers import AutoTokenizer

    from orchestrator.config import load_config

    cfg = load_config(os.path.join(ROOT, "configs", "tiny_cpu.yaml"), [
        f"model.path={a.model}", f"data.questions_per_step={a.questions}", f"rollout.group_size={a.group_size}", "seed=0"])
    batches = make_episodes(cfg, AutoTokenizer.from_pretrained(a.model), a.steps, a.min_response, a.max_response, seed=0)
    rows = [run_layout(*map(int, layout.split("x")), a, batches) for layout in a.layouts]
    settings = {"precision": a.precision, "questions": a.questions, "group_size": a.group_size,
                "micro_batch": a.micro_batch, "response_tokens": [a.min_response, a.max_response], "steps": a.steps,
                "cpu": cpu_description()}
    save_result(a.out, {"settings": settings, "rows": rows})
    for r in rows:
        print(f"{r['layout']} (ranks x cores, ZeRO {r['zero_stage']}): step {r['step_s']:.2f}s, grad norms {r['grad_norms']}")


if __name__ == "__main__":
    main()
