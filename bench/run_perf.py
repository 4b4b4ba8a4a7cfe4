"""All performance benchmarks, one after the other, then docs/benchmarks.md:

    python bench/run_perf.py            # or: make bench-perf   (about 80 minutes on 2 cores)
    python bench/run_perf.py --only rollout sync

Each benchmark runs in its own process (fresh Ray, nothing else competing for the cores) and writes
docs/bench/<name>.json; bench/report.py then renders the tables and plots.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHES = {
    # the rollout workload: GSM8K prompts, G samples each, stopping at EOS (HF pads finished rows)
    "rollout": ["bench/rollout_vs_hf.py", "--questions", "8", "--group-size", "8", "--max-new-tokens", "256",
                "--gsm8k", "../shared/data/gsm8k/train.jsonl", "--repeats", "1"],
    # raw decoding speed: every sequence to the full length
    "rollout_fixed": ["bench/rollout_vs_hf.py", "--questions", "8", "--group-size", "8", "--max-new-tokens", "64",
                      "--ignore-eos", "--out", "docs/bench/rollout_vs_hf_fixed_length.json"],
    # where an engine's decode step goes (matmuls vs their memcpy and FLOP floors), eager and compiled
    "decode_profile": ["bench/decode_profile.py", "--dtype", "float32", "bfloat16", "--modes", "eager", "compiled"],
    "sync": ["bench/weight_sync.py", "--layers", "8", "15", "30"],
    # what the engine's reload spends on packing and copying every byte (bounds the sync ratio on CPU)
    "reload_profile": ["bench/reload_profile.py", "--dtype", "float32", "bfloat16"],
    "e2e": ["bench/e2e_vs_trl.py", "--steps", "4", "--warmup", "1"],
    "e2e_bf16": ["bench/e2e_vs_trl.py", "--steps", "4", "--warmup", "1", "--precision", "bf16",
                 "--out", "docs/bench/e2e_vs_trl_bf16.json"],
    # fp32 again with compiled engines (about 70 s more per engine start, not counted in the steps)
    "e2e_compiled": ["bench/e2e_vs_trl.py", "--steps", "4", "--warmup", "1", "--set", "rollout.enforce_eager=false",
                     "--out", "docs/bench/e2e_vs_trl_fp32_compiled.json"],
    "breakdown": ["bench/step_breakdown.py", "--group-sizes", "4", "8", "16", "--workers", "1", "2", "--steps", "3"],
    # reward scoring after vs during generation, with a learned outcome reward model (a CPU forward per
    # sample; the untrained head on the policy's backbone costs the same as a trained one)
    "reward_overlap": ["bench/step_breakdown.py", "--group-sizes", "8", "--overlap", "0", "8", "--steps", "3",
                       "--out", "docs/bench/reward_overlap.json", "model.dtype=bfloat16", "reward.rule_weight=0",
                       "reward.orm_weight=1.0", "reward.orm_path=models/SmolLM2-135M-Instruct"],
    # the learner's reference pass during generation vs in its update (same cores here)
    "reference_overlap": ["bench/step_breakdown.py", "--group-sizes", "8", "--steps", "5", "--compare",
                          "learner.reference_overlap=false", "learner.reference_overlap=true",
                          "--out", "docs/bench/reference_overlap.json", "model.dtype=bfloat16", "rollout.dtype=bfloat16"],
    # the learner alone: ZeRO-2 vs the single-rank default (ZeRO-0); plain, shared-prompt and packed forwards
    "learner_step": ["bench/learner_step.py", "--precision", "bfloat16", "--compare",
                     "learner.zero_stage=2 learner.shared_prompt=false learner.packed_sequences=false",
                     "learner.shared_prompt=false learner.packed_sequences=false", "learner.packed_sequences=false", ""],
    "learner_step_fp32": ["bench/learner_step.py", "--precision", "float32", "--compare",
                          "learner.shared_prompt=false learner.packed_sequences=false", "learner.packed_sequences=false", "",
                          "--out", "docs/bench/learner_step_fp32.json"],
    "learner_step_gsm8k": ["bench/learner_step.py", "--precision", "bfloat16", "--task", "gsm8k", "--max-response", "128",
                           "--compare", "learner.shared_prompt=false learner.packed_sequences=false",
                           "learner.packed_sequences=false", "", "--out", "docs/bench/learner_step_gsm8k.json"],
    # the same two cores as one learner rank or as two DeepSpeed ranks of one core each
    "learner_ranks": ["bench/learner_ranks.py", "--layouts", "1x2", "2x1"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=sorted(BENCHES), default=list(BENCHES))
    a = p.parse_args()
    env = {**os.environ, "PYTHONPATH": ROOT, "VLLM_CONFIGURE_LOGGING": "0"}
    failed = []
    for name in a.only:
        t0 = time.time()
        print(f"== {name}: {' '.join(BENCHES[name])}", flush=True)
        if subprocess.run([sys.executable, *BENCHES[name]], cwd=ROOT, env=env).returncode != 0:
            failed.append(name)
        print(f"== {name}: {time.time() - t0:.0f}s", flush=True)
    subprocess.run([sys.executable, "bench/report.py"], cwd=ROOT, env=env, check=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
