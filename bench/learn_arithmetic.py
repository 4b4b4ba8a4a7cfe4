"""Evidence that GRPO learns: held-out greedy accuracy on synthetic sums, before and after training.

    python bench/learn_arithmetic.py --minutes 30 --out outputs/bench_arith

1. ``grpo eval`` the initial policy on the held-out split (greedy, disjoint (a, b) pairs).
2. Train with the real system (local Ray, vLLM engine, reward worker, DeepSpeed learner) on the
   training split until the time budget or the step budget runs out.
3. ``grpo eval`` the saved policy on the same held-out questions.
Writes ``<out>/learning.json`` with both accuracies, their standard errors and the per-step rewards.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def held_out_accuracy(model: str, digits: int, seed: int, max_new_tokens: int, out_file: str) -> dict:
    cmd = [sys.executable, "-m", "orchestrator.cli", "eval", "--model", model, "--dataset", "arithmetic",
           "--digits", str(digits), "--seed", str(seed), "--max-new-tokens", str(max_new_tokens), "--output", out_file]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"eval failed: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout)  # grpo eval prints its JSON alone on stdout
    p, n = result["accuracy"], result["n"]
    result["stderr"] = math.sqrt(p * (1 - p) / n)
    return result


def train(overrides: list[str], minutes: float) -> tuple[str, list[dict]]:
    import ray

    from orchestrator.config import load_config
    from orchestrator.driver import Trainer
    from orchestrator.metrics import MetricsLogger

    cfg = load_config(os.path.join(ROOT, "configs/tiny_cpu.yaml"), overrides)
    trainer = Trainer(cfg)
    trainer.setup()
    logger = MetricsLogger(cfg.output.dir, cfg.total_steps, ray_metrics=False)
    records, start = [], time.time()
    step = 0
    while step < cfg.total_steps and (time.time() - start) < minutes * 60:
        step += 1
        records.append(logger.log(step, trainer.run_step(step)))
    final = os.path.abspath(os.path.join(cfg.output.dir, "final"))
    trainer._get(trainer.learner.save_pretrained(final), "saving the final policy")
    trainer.shutdown()
    ray.shutdown()
    return final, records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30.0, help="training time budget (evaluation not included)")
    ap.add_argument("--out", default="outputs/bench_arith")
    ap.add_argument("--digits", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("overrides", nargs="*", help="extra config overrides")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    base_model = os.path.join(ROOT, "models/SmolLM2-135M-Instruct")
    overrides = [f"output.dir={args.out}", f"data.arithmetic_digits={args.digits}", "total_steps=1000",
                 f"rollout.max_new_tokens={args.max_new_tokens}", "learner.lr=2e-5", *args.overrides]
    before = held_out_accuracy(base_model, args.digits, 0, args.max_new_tokens, os.path.join(args.out, "eval_before.jsonl"))
    print(f"before: {before['accuracy']:.3f} +/- {before['stderr']:.3f} (n={before['n']})", flush=True)
    t0 = time.time()
    final, records = train(overrides, args.minutes)
    train_s = time.time() - t0
    after = held_out_accuracy(final, args.digits, 0, args.max_new_tokens, os.path.join(args.out, "eval_after.jsonl"))
    print(f"after:  {after['accuracy']:.3f} +/- {after['stderr']:.3f} (n={after['n']})", flush=True)
    summary = {
        "digits": args.digits, "overrides": overrides, "steps": len(records), "train_seconds": round(train_s, 1),
        "before": {k: before[k] for k in ("accuracy", "stderr", "n")},
        "after": {k: after[k] for k in ("accuracy", "stderr", "n")},
        "gain": after["accuracy"] - before["accuracy"],
        "gain_in_stderrs": (after["accuracy"] - before["accuracy"]) / math.hypot(before["stderr"], after["stderr"]),
        "train_reward_by_step": [round(r["reward/mean"], 4) for r in records],
        "kl_by_step": [round(r["loss/kl"], 5) for r in records],
        "response_length_by_step": [round(r["response/length_mean"], 2) for r in records],
    }
    with open(os.path.join(args.out, "learning.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({k: summary[k] for k in ("steps", "before", "after", "gain", "gain_in_stderrs")}))


if __name__ == "__main__":
    main()
