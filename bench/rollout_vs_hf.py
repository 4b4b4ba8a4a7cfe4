"""Rollout throughput: our vLLM rollout engine vs. Hugging Face ``generate`` on the same model, prompts,
group size G and maximum length, in one process, one after the other.

    python bench/rollout_vs_hf.py --questions 8 --group-size 8 --max-new-tokens 64 --out docs/bench/rollout_vs_hf.json

Both sample at temperature 1 in the engines' production dtype (fp32 on CPU) from the same chat-templated
arithmetic prompts. HF gets its best case: all Q x G sequences in one batch with a KV cache. Tokens
are the generated ones (up to EOS); ``--ignore-eos`` forces every sequence to the full length, which
compares raw decoding speed without the noise of different stopping points.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.results import save_result  # noqa: E402


def prompts_for(model: str, questions: int, seed: int, gsm8k: str | None = None) -> list[list[int]]:
    from transformers import AutoTokenizer

    from orchestrator.config import load_config
    from orchestrator.data import encode_prompts, load_problems

    data = ["data.task=gsm8k", f"data.train_file={gsm8k}"] if gsm8k else []
    cfg = load_config(os.path.join(ROOT, "configs/tiny_cpu.yaml"), [f"model.path={model}", f"seed={seed}", *data])
    tok = AutoTokenizer.from_pretrained(model)
    problems = load_problems(cfg.data, "train", seed)[:questions]
    return encode_prompts(tok, problems, cfg.data.system_prompt, cfg.data.max_prompt_tokens)


def run_vllm(model: str, prompts: list[list[int]], g: int, max_new: int, ignore_eos: bool, repeats: int,
             dtype: str) -> dict:
    from vllm import SamplingParams, TokensPrompt

    from rollout.engine import RolloutEngine

    t0 = time.time()
    engine = RolloutEngine(model, dtype=dtype, max_model_len=max(map(len, prompts)) + max_new,
                           gpu_memory_utilization=0.2, name="bench-engine")
    load_s = time.time() - t0
    params = SamplingParams(n=g, temperature=1.0, max_tokens=max_new, ignore_eos=ignore_eos, logprobs=0)
    inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    engine.llm.generate(inputs[:1], SamplingParams(n=2, max_tokens=4), use_tqdm=False)  # warm-up
    runs = []
    for _ in range(repeats):
        engine.llm.reset_prefix_cache()  # each run pays for its prompts, as after a weight sync
        t0 = time.time()
        outs = engine.llm.generate(inputs, params, use_tqdm=False)
        seconds = time.time() - t0
        tokens = sum(len(s.token_ids) for o in outs for s in o.outputs)
        runs.append({"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds})
    del engine
    gc.collect()
    return {"load_s": load_s, "runs": runs, "tokens_per_s": max(r["tokens_per_s"] for r in runs)}


def run_hf(model: str, prompts: list[list[int]], g: int, max_new: int, ignore_eos: bool, repeats: int,
           dtype: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left padding
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    kwargs = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new, num_return_sequences=g,
                  pad_token_id=pad, min_new_tokens=max_new if ignore_eos else 0)
    with torch.no_grad():
        lm.generate(input_ids=ids[:1], attention_mask=mask[:1], **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 0})
        runs = []
        for _ in range(repeats):
            t0 = time.time()
            out = lm.generate(input_ids=ids, attention_mask=mask, **kwargs)
            seconds = time.time() - t0
            new = out[:, width:]
            tokens = 0
            for row in new.tolist():  # up to and including the first EOS, as vLLM counts
                n = len(row)
                if not ignore_eos and tok.eos_token_id in row:
                    n = row.index(tok.eos_token_id) + 1
                tokens += n
            runs.append({"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds})
    return {"runs": runs, "tokens_per_s": max(r["tokens_per_s"] for r in runs), "batch": int(ids.shape[0]) * g}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct"))
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--dtype", default="auto", help="dtype of both (auto: the CPU engines' default, fp32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gsm8k", help="GSM8K .jsonl: prompt with its questions instead of 1-digit sums")
    p.add_argument("--out", default=os.path.join(ROOT, "docs/bench/rollout_vs_hf.json"))
    a = p.parse_args()
    prompts = prompts_for(a.model, a.questions, a.seed, a.gsm8k)
    from rollout.group import engine_dtype

    a.dtype = engine_dtype("auto", on_gpu=False) if a.dtype == "auto" else a.dtype
    from orchestrator.config import load_config
    from rollout.group import engine_env

    # the engine runs with the environment the rollout workers get (e.g. all cores for decoding)
    os.environ.update(engine_env(load_config(os.path.join(ROOT, "configs/tiny_cpu.yaml"), [])))
    vllm = run_vllm(a.model, prompts, a.group_size, a.max_new_tokens, a.ignore_eos, a.repeats, a.dtype)
    hf = run_hf(a.model, prompts, a.group_size, a.max_new_tokens, a.ignore_eos, a.repeats, a.dtype)
    result = {"settings": {k: v for k, v in vars(a).items() if k != "out"}, "vllm": vllm, "hf_generate": hf,
              "speedup": vllm["tokens_per_s"] / hf["tokens_per_s"]}
    save_result(a.out, result)
    print(f"rollout: vLLM {vllm['tokens_per_s']:.0f} tok/s, HF generate {hf['tokens_per_s']:.0f} tok/s, "
          f"x{result['speedup']:.2f} ({a.questions} prompts x G={a.group_size}, <= {a.max_new_tokens} tokens)")


if __name__ == "__main__":
    main()
