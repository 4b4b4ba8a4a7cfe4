"""Greedy accuracy of a model on GSM8K, MATH or the synthetic arithmetic task, through vLLM.

Runs one ``RolloutEngine`` in this process (no Ray needed) and grades with the rule verifiers.
"""
from __future__ import annotations

import os
import time
from typing import Optional

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
             max_prompt_tokens: int = 1024, system_prompt: Optional[str] = None) -> dict:
    """Greedy decoding on every problem; returns accuracy and counts (and the engine, for reuse)."""
    from reward.verifiers import verify
    from rollout.engine import RolloutEngine, SamplingSpec

    if engine is None:
        if not os.path.isdir(model) and model.startswith((".", "/", "models/")):
            raise FileNotFoundError(f"--model {model!r} does not exist")
        engine = RolloutEngine(os.path.abspath(model) if os.path.isdir(model) else model, dtype="float32",
                               max_model_len=max_prompt_tokens + max_new_tokens, gpu_memory_utilization=0.15)
    prompts = encode_prompts(engine.tokenizer, problems, system_prompt, max_prompt_tokens)
    t0 = time.time()
    texts = engine.generate_text(prompts, SamplingSpec(n=1, max_new_tokens=max_new_tokens, temperature=0.0))
    correct = [verify(p.task, t[0], p.gold) for p, t in zip(problems, texts)]
    return {
        "model": model,
        "n": len(problems),
        "correct": sum(correct),
        "accuracy": sum(correct) / max(len(problems), 1),
        "seconds": round(time.time() - t0, 2),
        "samples": [{"uid": p.uid, "gold": p.gold, "response": t[0], "correct": c}
                    for p, t, c in zip(problems, texts, correct)],
    }, engine
