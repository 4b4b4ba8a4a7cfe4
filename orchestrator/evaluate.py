"""Accuracy of a model on GSM8K, MATH or the synthetic arithmetic task, through vLLM.

Runs one ``RolloutEngine`` in this process (no Ray needed) and grades with the rule verifiers, in
their own killable, memory-capped process (``reward.rule_scorer``): greedy accuracy always; with
``samples=n`` also n sampled answers per question, reported as unbiased pass@k (k = 1, 2, 4, ..., n)
and maj@n (``orchestrator.eval_metrics``).
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Optional, Sequence

from orchestrator.config import DataConfig
from orchestrator.data import encode_prompts, load_gsm8k, load_math, make_arithmetic
from orchestrator.types import Problem

if TYPE_CHECKING:
    from reward.rule_scorer import RuleRewardScorer


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
        from orchestrator.model_prep import check_model_loadable

        check_model_loadable(model, "--model")
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


def grade(problems: Sequence[Problem], greedy: Sequence[str], sampled: Optional[Sequence[Sequence[str]]] = None,
          scorer: Optional["RuleRewardScorer"] = None) -> tuple[dict, list[dict]]:
    """(summary, per-question records) from each question's greedy answer and optional samples.

    Summary: n, correct, accuracy (greedy); with samples also pass@k (k = 1, 2, 4, ..., n) and maj@n.
    Shared by ``grpo eval`` and the periodic evaluation during training. Every answer is graded (and,
    for samples, given its voting key) in the protected scorer's process: ``scorer``, or a temporary
    ``RuleRewardScorer`` with default settings. An answer whose verifier raises, dies or runs out of
    time is wrong; the summary then counts them ('verifier_errors', 'verifier_timeouts', present only
    when not 0) and the answer's record carries its 'verifier_error'.
    """
    from orchestrator.eval_metrics import sampling_summary
    from reward.rule_scorer import RuleRewardScorer

    items = [(p.task, t, p.gold, f"{p.uid} (greedy)") for p, t in zip(problems, greedy)]
    for p, outs in zip(problems, sampled or ()):
        items.extend((p.task, o, p.gold, f"{p.uid} (sample {j})") for j, o in enumerate(outs))
    if scorer is None:
        with RuleRewardScorer() as own:
            verdicts, stats = own.score(items, with_answers=sampled is not None)
    else:
        verdicts, stats = scorer.score(items, with_answers=sampled is not None)
    greedy_verdicts, sampled_verdicts = verdicts[: len(greedy)], iter(verdicts[len(greedy):])
    records = [_record(v, uid=p.uid, gold=p.gold, response=t) for p, t, v in zip(problems, greedy, greedy_verdicts)]
    correct = [v.correct for v in greedy_verdicts]
    summary = {"n": len(problems), "correct": sum(correct), "accuracy": sum(correct) / max(len(problems), 1)}
    if sampled is not None:
        per_question = []
        for rec, outs in zip(records, sampled):
            graded = [next(sampled_verdicts) for _ in outs]
            rec["sampled"] = [_record(v, response=o, answer=v.answer) for o, v in zip(outs, graded)]
            per_question.append(([v.answer for v in graded], [v.correct for v in graded]))
        summary.update(sampling_summary(per_question))
        summary["samples_per_question"] = len(sampled[0]) if sampled else 0
    for key, count in (("verifier_errors", stats["verifier_errors"]), ("verifier_timeouts", stats["timeouts"])):
        if count:
            summary[key] = count
    return summary, records


def _record(verdict, **fields) -> dict:
    """One graded answer: ``fields``, its verdict, and why the verifier gave none, if it did not."""
    record = {**fields, "correct": verdict.correct}
    if verdict.error is not None:
        record["verifier_error"] = verdict.error
    return record
