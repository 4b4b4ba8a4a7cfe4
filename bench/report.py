"""Turn the benchmark JSON files in docs/bench/ into docs/benchmarks.md and PNG plots.

    python bench/report.py            # after bench/run_perf.py (or any of the single benchmarks)
"""
from __future__ import annotations

import json
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "docs", "bench")
TARGETS = {"rollout": 3.0, "e2e": 2.0, "sync": 3.0}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f", {int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def load(name: str):
    path = os.path.join(BENCH_DIR, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def verdict(ratio: float, target: float, higher_is_better: bool = True) -> str:
    ok = ratio >= target if higher_is_better else ratio <= target
    return "met" if ok else "NOT met"


def plot_sync(data: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    mib = [r["bytes"] / 2**20 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(mib, [r["sync_s"] for r in rows], "o-", label="weight sync (learner -> engine)")
    ax.plot(mib, [r["memcpy_s"] for r in rows], "s--", label="memcpy of the same bytes")
    ax.plot(mib, [3 * r["memcpy_s"] for r in rows], ":", label="target: 3 x memcpy")
    ax.set_xlabel("model bytes (MiB)")
    ax.set_ylabel("seconds")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_breakdown(data: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    labels = [f"G={r['group_size']}\n{r['workers']} eng." for r in rows]
    phases = [("time/generate_s", "generation"), ("time/reward_s", "reward"), ("time/learn_s", "learning"),
              ("time/sync_s", "sync"), ("time/other_s", "other/idle")]
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(rows)
    for key, name in phases:
        values = [r[key] for r in rows]
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("seconds per step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(pairs: list[tuple[str, float]], ylabel: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar([p[0] for p in pairs], [p[1] for p in pairs], color=["tab:blue", "tab:gray"][: len(pairs)])
    ax.set_ylabel(ylabel)
    for i, (_, v) in enumerate(pairs):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(title: str, result: dict, intro: str, header: list[str], rows: list[str]) -> list[str]:
    """Markdown lines of one benchmark: heading, the command that produced it, what it shows, its table."""
    return [f"## {title}", "", f"`{result['command']}`", "", intro, "", "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header), *rows, ""]


def main() -> None:
    os.makedirs(BENCH_DIR, exist_ok=True)
    lines = ["# Benchmarks", "", f"Machine: {machine()}.", "",
             "Rerun everything with `make bench-perf` (= `python bench/run_perf.py`); each section names the "
             "command that produced its numbers. Raw results: `docs/bench/*.json`.", ""]
    summary = []
    for name, title, counts in (("rollout_vs_hf", "the rollout workload (GSM8K prompts, each sample stops at EOS)", True),
                                ("rollout_vs_hf_fixed_length", "raw decoding (every sample to the full length)", False)):
        rollout = load(name)
        if not rollout:
            continue
        s = rollout["settings"]
        v, h = rollout["vllm"]["tokens_per_s"], rollout["hf_generate"]["tokens_per_s"]
        plot_bars([("grpo-ray vLLM engine", v), ("HF generate", h)], "generated tokens/s", os.path.join(BENCH_DIR, f"{name}.png"))
        if counts:
            summary.append(("rollout tokens/s vs HF generate", rollout["speedup"], TARGETS["rollout"]))
        lines += [f"## Rollout: vLLM engine vs Hugging Face generate, {title}", "",
                  f"`{rollout['command']}`", "",
                  f"{s['questions']} prompts x G={s['group_size']}, at most {s['max_new_tokens']} new tokens, "
                  f"{s['dtype']}, temperature 1, ignore_eos={s['ignore_eos']}; best of {s['repeats']} run(s).", "",
                  "| | tokens/s | seconds |", "|---|---|---|",
                  f"| grpo-ray rollout engine (vLLM) | {v:.1f} | {min(r['seconds'] for r in rollout['vllm']['runs']):.1f} |",
                  f"| HF `generate` (one batch of {rollout['hf_generate']['batch']} sequences) | {h:.1f} | "
                  f"{min(r['seconds'] for r in rollout['hf_generate']['runs']):.1f} |",
                  f"| ratio | **{rollout['speedup']:.2f}x** | |", "", f"![{name}](bench/{name}.png)", ""]
    decode = load("decode_profile")
    if decode:
        r0 = decode["rows"][0]
        lines += section(
            "Inside a decode step (vLLM engine, profiled in-process)", decode,
            f"{r0['rows']} rows decoding {decode['settings']['tokens']} tokens each (ignore_eos), all cores. "
            "Milliseconds per decode step; `outside ops` is the step's time in no profiled op (scheduling, "
            "Python). The matmuls' floors: a memcpy of the weights each step streams, and the step's matmul "
            "FLOPs at the speed of one large `torch.mm` in that dtype.",
            ["dtype", "mode", "engine start s", "tok/s", "ms/step", "matmul", "attention", "sampling", "other ops",
             "outside ops", "weights memcpy", "FLOPs at mm speed", "matmul GFLOP/s (large mm)"],
            [f"| {r['dtype']} | {r['mode']} | {r['engine_start_s']:.0f} | {r['tokens_per_s']:.0f} | {r['ms_per_step']:.0f} | "
             + " | ".join(f"{r['profiled_ms_per_step'][k]:.0f}" for k in ("matmul", "attention", "sampling", "other", "outside_ops"))
             + f" | {r['weights_memcpy_ms']:.0f} | {r['matmul_flops_ms']:.0f} | {r['matmul_gflops']:.0f} ({r['mm_gflops']:.0f}) |"
             for r in decode["rows"]])
    for name, label in (("e2e_vs_trl", "fp32"), ("e2e_vs_trl_fp32_compiled", "fp32, compiled engines"),
                        ("e2e_vs_trl_bf16", "bf16 mixed precision")):
        e2e = load(name)
        if not (e2e and e2e.get("ours") and e2e.get("trl") and e2e.get("speedup_samples_per_s")):
            continue
        o, t, ratio = e2e["ours"], e2e["trl"], e2e["speedup_samples_per_s"]
        png = "e2e.png" if name == "e2e_vs_trl" else f"{name}.png"
        plot_bars([("grpo-ray", o["samples_per_s"]), ("TRL GRPOTrainer", t["samples_per_s"])], "samples/s",
                  os.path.join(BENCH_DIR, png))
        summary.append((f"end-to-end samples/s vs TRL, {label}", ratio, TARGETS["e2e"]))
        lines += [f"## End to end: grpo-ray vs TRL GRPOTrainer, {label}", "", f"`{e2e['command']}`", "",
                  "Settings: " + ", ".join(f"{k}={v}" for k, v in e2e.get("settings", {}).items()
                                          if not isinstance(v, (list, dict))), "",
                  "| | seconds/step | generation s | learning s | samples/s |", "|---|---|---|---|---|",
                  f"| grpo-ray | {o['mean_step_s']:.1f} | {o['mean_generate_s']:.1f} | {o['mean_learn_s']:.1f} | "
                  f"{o['samples_per_s']:.2f} |",
                  f"| TRL GRPOTrainer | {t['mean_step_s']:.1f} | {t['mean_generate_s']:.1f} | "
                  f"{t['mean_learn_s_approx']:.1f} (step - generation) | {t['samples_per_s']:.2f} |",
                  f"| ratio | | | | **{ratio:.2f}x** (target >= {TARGETS['e2e']}x: {verdict(ratio, TARGETS['e2e'])}) |",
                  "", f"![{name}](bench/{png})", ""]
    sync = load("weight_sync")
    if sync:
        plot_sync(sync, os.path.join(BENCH_DIR, "weight_sync.png"))
        worst = max(r["ratio_to_memcpy"] for r in sync["rows"])
        summary.append(("weight sync / memcpy (worst size)", worst, TARGETS["sync"]))
        lines += ["## Weight sync vs a memory copy of the same bytes", "", f"`{sync['command']}`", "",
                  "| layers | MiB | sync s | learner write s | engine reload s | memcpy s | sync / memcpy |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['layers']} | {r['bytes'] / 2**20:.0f} | {r['sync_s']:.3f} | {r.get('write_s', float('nan')):.3f} | "
                  f"{r.get('engine_load_s', float('nan')):.3f} | {r['memcpy_s']:.3f} | {r['ratio_to_memcpy']:.1f}x |"
                  for r in sync["rows"]]
        lines += ["", f"Mode: `{sync['rows'][0]['mode']}`. Target: within {TARGETS['sync']}x of memcpy: "
                  f"{verdict(worst, TARGETS['sync'], higher_is_better=False)}.", "", "![sync](bench/weight_sync.png)", ""]
    reload = load("reload_profile")
    if reload:
        lines += ["### Inside the engine's reload (vLLM `reload_weights`, profiled in-process)", "", f"`{reload['command']}`", "",
                  "| dtype | MiB | memcpy s | learner write s | reload s | oneDNN packing s | copies into parameters s | "
                  "packing + copies / memcpy |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['dtype']} | {r['bytes'] / 2**20:.0f} | {r['memcpy_s']:.3f} | {r['write_s']:.3f} | {r['reload_s']:.3f} | "
                  f"{r['onednn_pack_s'] + r['sgl_pack_s']:.3f} | {r['param_copy_s']:.3f} | {r['floor_ratio']:.1f}x |"
                  for r in reload["rows"]]
        lines += ["", "Packing and copying are the two parts of vLLM's reload that touch every byte; no sync "
                  "through vLLM's supported reload on CPU can be faster than they are.", ""]
    steps = load("step_breakdown")
    if steps:
        plot_breakdown(steps, os.path.join(BENCH_DIR, "step_breakdown.png"))
        lines += ["## Step breakdown", "", f"`{steps['command']}`", "",
                  "| G | engines | step s | generation | reward | learning | sync | other | samples/s | tokens/s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['group_size']} | {r['workers']} | {r['time/step_s']:.1f} | {r['time/generate_s']:.1f} | "
                  f"{r['time/reward_s']:.1f} | {r['time/learn_s']:.1f} | {r['time/sync_s']:.1f} | {r['time/other_s']:.1f} | "
                  f"{r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} |" for r in steps["rows"]]
        lines += ["", "![breakdown](bench/step_breakdown.png)", ""]
    overlap = load("reward_overlap")
    if overlap:
        lines += section(
            "Reward scoring during generation", overlap,
            "Learned outcome reward model (one CPU forward per sample), bf16, G=8, Q=4, one engine. "
            "`reward wait` is the step's time spent on rewards after generation ended; `scoring` is all "
            "the scoring time, most of it inside generation when chunks are scored as they finish.",
            ["reward.overlap_samples", "step s", "generation", "reward wait", "scoring", "learning", "samples/s"],
            [f"| {r['overlap_samples']} | {r['time/step_s']:.1f} | {r['time/generate_s']:.1f} | {r['time/reward_s']:.1f} | "
             f"{r['time/reward_scoring_s']:.1f} | {r['time/learn_s']:.1f} | {r['samples_per_s']:.2f} |"
             for r in overlap["rows"]])
    reference = load("reference_overlap")
    if reference:
        lines += section(
            "Reference logprobs during generation", reference,
            "bf16, G=8, Q=4, one engine, rule rewards. With `learner.reference_overlap=true` the learner computes "
            "the reference logprobs of each chunk of finished samples while the engine decodes the rest; "
            "`reference wait` is what is left of it after generation, `computed` its total time, `in update` "
            "the reference pass left inside learning.",
            ["variant", "step s", "generation", "reference wait", "computed", "learning", "in update", "samples/s"],
            [f"| {r['point'] or 'defaults'} | {r['time/step_s']:.1f} | {r['time/generate_s']:.1f} | "
             f"{r['time/reference_wait_s']:.1f} | {r['time/reference_overlap_s']:.1f} | {r['time/learn_s']:.1f} | "
             f"{r['time/learner_ref_s']:.1f} | {r['samples_per_s']:.2f} |" for r in reference["rows"]])
    for name in ("learner_step", "learner_step_fp32", "learner_step_gsm8k"):
        learner = load(name)
        if not learner:
            continue
        st = learner["settings"]
        lines += section(
            f"Learner step alone: {st['task']} prompts, {st['precision']}", learner,
            f"Q={st['questions']} x G={st['group_size']}, prompts {st['prompt_tokens_mean']} tokens on average, "
            f"responses {st['response_tokens'][0]}-{st['response_tokens'][1]} tokens, micro-batches of "
            f"{st['micro_batch']}; medians of steps 2-{st['steps']}, all variants on the same batches in turns.",
            ["variant", "ZeRO", "step s", "reference s", "update s", "rows shared / packed", "grad norms"],
            [f"| {r['variant'] or 'defaults'} | {r['zero_stage']} | {r['step_s']:.2f} | {r['reference_s']:.2f} | "
             f"{r['update_s']:.2f} | {r['shared_prompt_frac']:.0%} / {r['packed_frac']:.0%} | {', '.join(f'{g:.4f}' for g in r['grad_norms'])} |"
             for r in learner["rows"]])
    ranks = load("learner_ranks")
    if ranks:
        st = ranks["settings"]
        lines += section(
            f"Learner ranks: the same cores as one rank or as several, {st['precision']}", ranks,
            f"{st['cpu']}. Q={st['questions']} x G={st['group_size']}, responses {st['response_tokens'][0]}-"
            f"{st['response_tokens'][1]} tokens, micro-batches of {st['micro_batch']}, the tiny model; medians of steps "
            f"2-{st['steps']} on the same batches. Ranks x cores per rank; several ranks are one DeepSpeed group over "
            "gloo, each rank training 1/N of the step's groups. The gradient norms show the same updates.",
            ["ranks x cores", "ZeRO", "step s", "steps s", "grad norms", "peak RSS per rank GiB", "plan GiB (`grpo plan`)"],
            [f"| {r['layout']} | {r['zero_stage']} | {r['step_s']:.2f} | {', '.join(f'{s:.1f}' for s in r['steps_s'])} | "
             f"{', '.join(f'{g:.5f}' for g in r['grad_norms'])} | {r.get('peak_rss_gb', float('nan')):.2f} | "
             f"{r.get('plan_gb', float('nan')):.2f} |" for r in ranks["rows"]])
    if summary:
        table = ["## Targets", "", "| what | measured | target | |", "|---|---|---|---|"]
        for name, value, target in summary:
            better = "sync" not in name
            table.append(f"| {name} | {value:.2f}x | {'>=' if better else '<='} {target}x | {verdict(value, target, better)} |")
        lines[6:6] = table + [""]
    notes = os.path.join(BENCH_DIR, "notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines += [f.read()]
    with open(os.path.join(ROOT, "docs", "benchmarks.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote docs/benchmarks.md ({len(summary)} targets)", file=sys.stderr)


if __name__ == "__main__":
    main()
