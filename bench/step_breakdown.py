"""Where a GRPO step's time goes: generation / reward / learning / sync / other, and how each phase
grows with the group size G and with the number of rollout engines.

    python bench/step_breakdown.py --group-sizes 4 8 16 --workers 1 2 --out docs/bench/step_breakdown.json

``--overlap 0 8`` instead compares reward scoring after generation (0) with scoring chunks of 8
finished samples during generation (``reward.overlap_samples``), at G=``--group-sizes`` on one engine;
``--compare "learner.reference_overlap=false" ""`` compares any sets of overrides the same way.

Each point is a real run (local Ray, vLLM engines, reward workers, DeepSpeed learner) of
``--steps`` steps on the tiny model; the first step is dropped (warm-up) and the rest averaged.
"other" is the step's wall time not inside one of the four phases (driver work, waiting, metrics).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.results import save_result  # noqa: E402

PHASES = ("time/generate_s", "time/reward_s", "time/reference_wait_s", "time/learn_s", "time/sync_s")
HIDDEN = ("time/reward_scoring_s", "time/reference_overlap_s", "time/learner_ref_s")


def breakdown(records: list[dict]) -> dict:
    """Mean seconds per phase over ``records`` (per-step metrics), plus 'other' and samples/s.

    The reward phase is the time a step waits for rewards after generation (``time/reward_wait_s``);
    scoring that ran during generation (``reward.overlap_samples``) is hidden inside the generation
    phase and reported apart as ``time/reward_scoring_s``. Likewise the reference phase is the wait for
    reference logprobs computed during generation (``learner.reference_overlap``), their compute time
    ``time/reference_overlap_s``; ``time/learner_ref_s`` is the reference time left inside learning."""
    records = [{"time/reference_wait_s": 0.0, "time/reference_overlap_s": 0.0, "time/learner_ref_s": 0.0, **r,
                "time/reward_s": r.get("time/reward_wait_s", r["time/reward_s"]),
                "time/reward_scoring_s": r["time/reward_s"]} for r in records]
    out = {k: statistics.fmean(r[k] for r in records) for k in (*PHASES, "time/step_s", *HIDDEN)}
    out["time/other_s"] = max(0.0, out["time/step_s"] - sum(out[k] for k in PHASES))
    out["tokens_per_s"] = statistics.fmean(r["rollout/tokens_per_s"] for r in records)
    out["response_length"] = statistics.fmean(r["response/length_mean"] for r in records)
    return out


def run_point(model: str, group_size: int, workers: int, steps: int, questions: int, max_new: int,
              extra: list[str]) -> dict:
    import ray

    from orchestrator.config import load_config
    from orchestrator.driver import Trainer

    batch = questions * group_size
    cfg = load_config(os.path.join(ROOT, "configs/tiny_cpu.yaml"), [
        f"model.path={model}", f"total_steps={steps}", f"data.questions_per_step={questions}",
        f"rollout.group_size={group_size}", f"rollout.num_workers={workers}", f"rollout.max_new_tokens={max_new}",
        f"rollout.gpu_memory_utilization={0.2 / workers:.3f}", f"learner.micro_batch_size={min(8, batch)}",
        f"output.dir={tempfile.mkdtemp(prefix='bench-breakdown-')}", "output.checkpoint_every=0",
        "output.save_final=false", "logging.ray_metrics=false", "logging.dashboard=false", *extra])
    trainer = Trainer(cfg)
    records = []
    try:
        trainer.setup()
        for step in range(1, steps + 1):
            records.append(trainer.run_step(step))
            print(f"  G={group_size} engines={workers} step {step}: {records[-1]['time/step_s']:.1f}s", flush=True)
    finally:
        trainer.shutdown()
        ray.shutdown()
    result = breakdown(records[1:] or records)
    result.update({"group_size": group_size, "workers": workers, "questions": questions, "overrides": list(extra),
                   "overlap_samples": cfg.reward.overlap_samples, "samples_per_s": batch / result["time/step_s"]})
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct"))
    p.add_argument("--group-sizes", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--base-group-size", type=int, default=8, help="G of the engine-count sweep")
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--overlap", type=int, nargs="+", help="reward.overlap_samples values to compare (one engine)")
    p.add_argument("--compare", nargs="+", metavar="OVERRIDES",
                   help="sets of overrides to compare (one engine), each one quoted string; \"\" = none")
    p.add_argument("--out", default=os.path.join(ROOT, "docs/bench/step_breakdown.json"))
    p.add_argument("overrides", nargs="*", help="extra config overrides for every point")
    a = p.parse_args()
    points = [(g, 1, []) for g in a.group_sizes] + [(a.base_group_size, w, []) for w in a.workers if w != 1]
    if a.overlap:
        points = [(g, 1, [f"reward.overlap_samples={k}"]) for g in a.group_sizes for k in a.overlap]
    if a.compare:
        points = [(g, 1, c.split()) for g in a.group_sizes for c in a.compare]
    rows = []
    for g, w, point in points:
        rows.append(run_point(a.model, g, w, a.steps, a.questions, a.max_new_tokens, [*a.overrides, *point]))
        rows[-1]["point"] = " ".join(point)
        r = rows[-1]
        print(f"G={g} engines={w} {' '.join(point)}: step {r['time/step_s']:.1f}s = gen {r['time/generate_s']:.1f} "
              f"+ reward {r['time/reward_s']:.1f} (scoring {r['time/reward_scoring_s']:.1f}) + reference "
              f"{r['time/reference_wait_s']:.1f} (computed {r['time/reference_overlap_s']:.1f}) + learn "
              f"{r['time/learn_s']:.1f} (reference {r['time/learner_ref_s']:.1f}) + sync {r['time/sync_s']:.1f} "
              f"+ other {r['time/other_s']:.1f}; {r['samples_per_s']:.2f} samples/s", flush=True)
    save_result(a.out, {"rows": rows, "settings": vars(a)})


if __name__ == "__main__":
    main()
