"""Accuracy of a model on GSM8K, MATH or the synthetic arithmetic task, through vLLM.

Runs one ``RolloutEngine`` in this process (no Ray needed) and grades with the rule verifiers:
greedy accuracy always; with ``samples=n`` also n sampled answers per question, reported as
unbiased pass@k (k = 1, 2, 4, ..., n) and maj@n (``orchestrator.eval_metrics``).
"""
from __future__ import annotations

import os
import time
from typing import Optional, Sequence

from orchestrator.config import DataConfig
from orchestrator.data import encode_prompts, load_gsm8k, load_math, make_arithmetic
from orchestrator.types import Problem


def load_eval_problems(dataset: str, data_file: Optional[str], limit: Optional[int], digits: int = 1,
                       seed: int = 0, eval_size: int = 200) -> list[Problem]:
    if dataset == "arithmetic":
        problems = make_arithmetic(digits, DataConfig.arithmetic_train_size, eval_size, seed)[1]
    elif dataset in ("gsm8k", "math"):
        if not data_file:
            raise ValueError(f"--data-file is required for --dataset {dataset} (a .jsonl path or a hub name)")
        problems = (load_gsm8k if dataset == "gsm8k" else load_math)(data_file, default_split="test")
    else:
        raise ValueError(f"--dataset must be gsm8k, math or arithmetic, got {dataset!r}")
    return problems[:limit] if limit else problems


def evaluate(model: str, problems: list[Problem], max_new_tokens: int = 512, engine=None,
             max_prompt_tokens: int = 1024, system_prompt: Optional[str] = None, samples: int = 0,
             temperature: float = 1.0) -> tuple[dict, object]:
    """Greedy decoding (and ``samples`` sampled answers) on every problem; returns the summary with
    per-question records under 'samples', and the engine, for reuse."""
    from rollout.engine import RolloutEngine, SamplingSpec

    if engine is None:
        from orchestrator.model_prep import check_model_path

        check_model_path(model, "--model")
        engine = RolloutEngine(os.path.abspath(model) if os.path.isdir(model) else model, dtype="float32",
                               max_model_len=max_prompt_tokens + max_new_tokens, gpu_memory_utilization=0.15)
    prompts = encode_prompts(engine.tokenizer, problems, system_prompt, max_prompt_tokens)
    t0 = time.time()
    greedy = [t[0] for t in engine.generate_text(prompts, SamplingSpec(n=1, max_new_tokens=max_new_tokens, temperature=0.0))]
    sampled = None
    if samples:
        sampled = engine.generate_text(prompts, SamplingSpec(n=samples, max_new_tokens=max_new_tokens, temperature=temperature))
    result, records = grade(problems, greedy, sampled)
    if samples:
        result["temperature"] = temperature
    result = {"model": model, **result, "seconds": round(time.time() - t0, 2), "samples": records}
    return result, engine


def grade(problems: Sequence[Problem], greedy: Sequence[str],
          sampled: Optional[Sequence[Sequence[str]]] = None) -> tuple[dict, list[dict]]:
    """(summary, per-question records) from each question's greedy answer and optional samples.

    Summary: n, correct, accuracy (greedy); with samples also pass@k (k = 1, 2, 4, ..., n) and maj@n.
    Shared by ``grpo eval`` and the periodic evaluation during training.
    """
    from orchestrator.eval_metrics import sampling_summary
    from reward.verifiers import answer_key, verify

    correct = [verify(p.task, t, p.gold) for p, t in zip(problems, greedy)]
    records = [{"uid": p.uid, "gold": p.gold, "response": t, "correct": c} for p, t, c in zip(problems, greedy, correct)]
    summary = {"n": len(problems), "correct": sum(correct), "accuracy": sum(correct) / max(len(problems), 1)}
    if sampled is not None:
        per_question = []
        for p, rec, outs in zip(problems, records, sampled):
            flags = [verify(p.task, o, p.gold) for o in outs]
            keys = [answer_key(p.task, o) for o in outs]
            rec["sampled"] = [{"response": o, "answer": k, "correct": f} for o, k, f in zip(outs, keys, flags)]
            per_question.append((keys, flags))
        summary.update(sampling_summary(per_question))
        summary["samples_per_question"] = len(sampled[0]) if sampled else 0
    return summary, records
