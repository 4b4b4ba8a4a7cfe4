"""The learner's step alone (DeepSpeed engine + reference, in this process), config variants side by side.

    python bench/learner_step.py --compare "learner.zero_stage=2 learner.shared_prompt=false" \
        "learner.shared_prompt=false" "" --precision bfloat16

Every variant trains on the same batches, in turns (variant A step 1, B step 1, ..., A step 2, ...), so
drift of the machine hits all of them alike. Prompts are the task's real prompts (chat template, as
the engines see them); responses are random tokens with lengths drawn uniformly from
[--min-response, --max-response], which costs the learner what sampled text of those lengths costs.
Each row gives the median over the steps after the first; the gradient norms show that the variants
apply the same update.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.results import save_result  # noqa: E402


def make_batches(cfg, tokenizer, steps: int, min_response: int, max_response: int, seed: int):
    """``steps`` collated batches of Q questions x G responses (G rows per prompt, as rollout gives them)."""
    from learner.batching import collate

    return [(collate(episodes, pad_token_id=tokenizer.pad_token_id or 0), lengths)
            for episodes, lengths in make_episodes(cfg, tokenizer, steps, min_response, max_response, seed)]


def make_episodes(cfg, tokenizer, steps: int, min_response: int, max_response: int, seed: int):
    """``steps`` (episodes, prompt lengths) of Q questions x G random responses each."""
    from orchestrator.data import QuestionSampler, encode_prompts, load_problems
    from orchestrator.types import Episode

    rng = random.Random(seed)
    sampler = QuestionSampler(load_problems(cfg.data, "train", cfg.seed), cfg.data.questions_per_step, cfg.seed)
    vocab = tokenizer.vocab_size
    out = []
    for _ in range(steps):
        problems = sampler.next_batch()
        prompts = encode_prompts(tokenizer, problems, cfg.data.system_prompt, cfg.data.max_prompt_tokens)
        episodes = []
        for group, (problem, prompt) in enumerate(zip(problems, prompts)):
            for _ in range(cfg.rollout.group_size):
                response = tuple(rng.randrange(100, vocab) for _ in range(rng.randint(min_response, max_response)))
                episodes.append(Episode(group_id=group, problem=problem, prompt_token_ids=tuple(prompt),
                                        response_token_ids=response, sampler_logprobs=tuple(-2.0 for _ in response),
                                        response_text="", finish_reason="stop", policy_version=0,
                                        reward=float(rng.random() < 0.3)))
        out.append((episodes, [len(p) for p in prompts]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", nargs="+", required=True, help="variants: each a space-separated list of overrides")
    p.add_argument("--precision", choices=["float32", "bfloat16"], default="bfloat16")
    p.add_argument("--task", choices=["arithmetic", "gsm8k"], default="arithmetic")
    p.add_argument("--gsm8k", default=os.path.join(ROOT, "..", "shared", "data", "gsm8k", "train.jsonl"))
    p.add_argument("--questions", "-Q", type=int, default=4)
    p.add_argument("--group-size", "-G", type=int, default=8)
    p.add_argument("--min-response", type=int, default=5)
    p.add_argument("--max-response", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="steps per variant; the first is left out of the medians")
    p.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct"))
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "learner_step.json"))
    a = p.parse_args()

    from learner.actor import _start_rank
    from learner.trainer import PolicyTrainer
    from orchestrator.config import load_config

    base = [f"model.path={a.model}", f"model.dtype={a.precision}", f"data.task={a.task}",
            f"data.questions_per_step={a.questions}", f"rollout.group_size={a.group_size}", "learner.num_cpus=2",
            "learner.lr=1e-5", "seed=0"]
    if a.task == "gsm8k":
        base.append(f"data.train_file={a.gsm8k}")
    configs = [load_config(os.path.join(ROOT, "configs", "tiny_cpu.yaml"), base + v.split()) for v in a.compare]
    _start_rank(0, 2)
    batch_size = a.questions * a.group_size
    trainers = [PolicyTrainer(cfg, batch_size=batch_size) for cfg in configs]
    batches = make_batches(configs[0], trainers[0].tokenizer, a.steps, a.min_response, a.max_response, seed=0)
    runs = [[] for _ in a.compare]
    for step, (batch, _) in enumerate(batches):
        for variant, trainer in enumerate(trainers):
            t0 = time.time()
            metrics = trainer.train_step(batch, step, a.group_size)
            runs[variant].append({"step_s": time.time() - t0, **metrics})
            print(f"step {step} [{a.compare[variant] or 'defaults'}]: {runs[variant][-1]['step_s']:.2f}s "
                  f"(reference {metrics['time/learner_ref_s']:.2f}s, shared rows {metrics['learner/shared_prompt_frac']:.2f}, "
                  f"packed rows {metrics['learner/packed_frac']:.2f}, grad norm {metrics['loss/grad_norm']:.4f})", flush=True)
    rows = []
    for variant, trainer, steps in zip(a.compare, trainers, runs):
        timed = steps[1:] or steps
        rows.append({
            "variant": variant, "zero_stage": trainer.zero_stage,
            "step_s": statistics.median(s["step_s"] for s in timed),
            "reference_s": statistics.median(s["time/learner_ref_s"] for s in timed),
            "update_s": statistics.median(s["step_s"] - s["time/learner_ref_s"] for s in timed),
            "shared_prompt_frac": statistics.fmean(s["learner/shared_prompt_frac"] for s in timed),
            "packed_frac": statistics.fmean(s["learner/packed_frac"] for s in timed),
            "grad_norms": [round(s["loss/grad_norm"], 5) for s in steps],
            "steps_s": [round(s["step_s"], 3) for s in steps],
        })
    prompt_lengths = [n for _, lengths in batches for n in lengths]
    settings = {"precision": a.precision, "task": a.task, "questions": a.questions, "group_size": a.group_size,
                "response_tokens": [a.min_response, a.max_response], "steps": a.steps,
                "prompt_tokens_mean": round(statistics.fmean(prompt_lengths), 1), "micro_batch": configs[0].learner.micro_batch_size}
    save_result(a.out, {"settings": settings, "rows": rows})
    for r in rows:
        print(f"{r['variant'] or 'defaults'}: step {r['step_s']:.2f}s (reference {r['reference_s']:.2f}s, update "
              f"{r['update_s']:.2f}s), ZeRO {r['zero_stage']}, shared rows {r['shared_prompt_frac']:.2f}, packed rows {r['packed_frac']:.2f}")


if __name__ == "__main__":
    main()
