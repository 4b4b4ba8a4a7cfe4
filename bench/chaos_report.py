"""The chaos bench's result: the invariants checked at the end, the result dict (docs/bench/chaos.json) and
its markdown tables (the chaos:begin/end section of docs/chaos.md)."""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import subprocess
from typing import TYPE_CHECKING

import psutil

from bench.chaos_faults import EXPECTED, EXPECTED_RC, finish_orphan_checks, judge_outcomes
from bench.chaos_processes import alive, now, proc_title
from bench.results import repo_relative

if TYPE_CHECKING:
    from bench.chaos import Chaos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_invariants(bench: Chaos) -> tuple[dict, dict]:
    """The invariants (name -> ok, detail), and the counts the result reports besides them (samples_lost,
    samples_duplicated, shm_new_other)."""
    from orchestrator.checkpoint import list_checkpoints
    from orchestrator.config import load_config
    from orchestrator.data import QuestionSampler, load_problems

    inv: dict[str, dict] = {}
    last = bench.drivers[-1] if bench.drivers else None
    final = last.total if last is not None else 0
    metrics = read_records(os.path.join(bench.run_dir, "metrics.jsonl"))
    steps = [r.get("step") for r in metrics]
    counts = collections.Counter(steps)
    dup_steps = sorted(s for s, c in counts.items() if c > 1)
    missing_steps = sorted(set(range(1, final + 1)) - set(counts))
    failed_kept = [r["step"] for r in metrics if r.get("step/failed_after_update")]
    inv["metrics_each_step_once"] = {
        "ok": final > 0 and steps == list(range(1, final + 1)),
        "detail": f"{len(steps)} records, steps {compress(steps)}; duplicated {dup_steps}, missing {missing_steps} "
                  f"(records of steps that failed after their update, kept: {failed_kept})"}

    cfg = load_config(os.path.join(ROOT, "configs/tiny_cpu.yaml"), bench.overrides(max(final, 1)))
    problems = load_problems(cfg.data, "train", cfg.seed)
    sampler = QuestionSampler(problems, cfg.data.questions_per_step, cfg.seed, cfg.data.shuffle)
    expected = {s: [p.uid for p in sampler.next_batch()] for s in range(1, final + 1)}
    rows = read_records(os.path.join(bench.run_dir, "samples.jsonl"))
    by_step: dict = collections.defaultdict(list)
    duplicated = 0
    for r in rows:
        uids = by_step[r.get("step")]
        if r.get("uid") in uids:
            if r.get("verifier_error") is None:
                duplicated += 1  # a verifier error row repeats its group's uid by design (every failed sample is kept)
            continue
        uids.append(r.get("uid"))
    lost = sum(len(set(u) - set(by_step.get(s, []))) for s, u in expected.items())
    foreign = sum(len(set(u) - set(expected.get(s, []))) for s, u in by_step.items())
    wrong_steps = sorted(s for s in by_step if by_step[s] != expected.get(s))
    n = len(problems)
    trained = [u for s in sorted(expected) for u in by_step.get(s, [])]
    epochs = [trained[i:i + n] for i in range(0, len(trained), n)]
    bad_epochs = [e for e, chunk in enumerate(epochs)
                  if max(collections.Counter(chunk).values()) > 1
                  or (len(chunk) == n and set(chunk) != {p.uid for p in problems})]
    inv["samples_each_question_once_per_epoch"] = {
        "ok": final > 0 and not (lost or foreign or duplicated or wrong_steps or bad_epochs)
              and sorted(by_step) == list(range(1, final + 1)),
        "detail": f"{len(rows)} rows over {len(by_step)} steps, {len(trained)} questions trained = "
                  f"{len(trained) / n:.2f} epochs of {n}; lost {lost}, duplicated {duplicated}, foreign {foreign}, "
                  f"steps not in the sampler's order {wrong_steps[:10]}, epochs with a question not exactly once "
                  f"{bad_epochs}"}
    ckpts = [s for s, _ in list_checkpoints(bench.run_dir)]
    ok = (bench.phase == "done" and last is not None and last.rc == 0 and bool(metrics)
          and metrics[-1].get("step") == final and metrics[-1].get("policy_version") == final
          and bool(ckpts) and ckpts[-1] == final and (last.result or {}).get("status") == "done")
    inv["final_step_count"] = {
        "ok": ok, "detail": f"wanted {final}; last start rc {last.rc if last else None}, "
                            f"last record step {metrics[-1].get('step') if metrics else None} "
                            f"(policy_version {metrics[-1].get('policy_version') if metrics else None}), "
                            f"checkpoints {ckpts}, result {json.dumps(last.result) if last and last.result else None}"}

    id_file = os.path.join(bench.run_dir, "run_id")
    run_id = open(id_file).read().strip() if os.path.exists(id_file) else "?"
    shm_now = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    shm_run = sorted(f for f in shm_now if run_id in f)
    with bench.tracker.lock:
        shm_vllm = sorted(f for f in bench.tracker.shm if f in shm_now)  # queues of vLLM processes gone without cleanup
    shm_new_other = sorted(shm_now - bench.shm_before - set(shm_run) - set(shm_vllm))
    still = [{"pid": t.pid, "driver": t.instance, "title": proc_title(p)[:120]}
             for t in list(bench.tracker.procs.values()) if (p := alive(t.pid, t.ctime)) is not None]
    stayed = [r for r in bench.leftovers if r["ended_on_its_own_after_s"] is None]  # killed by the bench, or kept
    slow = [r for r in bench.leftovers if r["ended_on_its_own_after_s"] is not None]
    by_role = collections.Counter(r["role"] for r in stayed)
    orphans = [(i + 1, c["title"]) for i, f in enumerate(bench.faults) for c in (f.children_alive_later or [])]
    inv["no_leftovers"] = {
        "ok": not shm_run and not shm_vllm and not stayed and not still and not orphans,
        "detail": f"/dev/shm files of run {run_id}: {shm_run}; /dev/shm files of the run's vLLM processes "
                  f"({len(bench.tracker.shm)} seen): {shm_vllm}; processes still alive {bench.args.leftover_watch:g}s "
                  f"after their driver's exit: {sum(by_role.values())} ({dict(by_role)}); alive at the end: {len(still)}; "
                  f"processes that outlived their driver by over {bench.args.leftover_grace:g}s but ended on their own: "
                  f"{[(r['title'][:30], r['ended_on_its_own_after_s']) for r in slow]}; "
                  f"processes of a fault's target alive {bench.args.orphan_check:g}s after the target ended (fault, title): {orphans}; "
                  f"other new /dev/shm entries (shared machine, not necessarily this run's): {len(shm_new_other)}"}
    return inv, {"samples_lost": lost, "samples_duplicated": duplicated + foreign, "shm_new_other": shm_new_other}


def build_report(bench: Chaos) -> dict:
    """The result of a finished run (docs/bench/chaos.json, before ``command`` and repo-relative paths)."""
    finish_orphan_checks(bench.faults)  # checks still pending at the end: now
    judge_outcomes(bench.faults, bench.drivers, bench.step_times())
    inv, counts = check_invariants(bench)
    by_kind: dict[str, dict] = {}
    for kind in bench.kinds:
        fs = [f for f in bench.faults if f.kind == kind]
        rec = sorted(f.recovery_s for f in fs if f.recovery_s is not None and not f.outcome.startswith("not"))
        by_kind[kind] = {
            "injected": len(fs),
            "recovered": sum(not f.outcome.startswith("not") for f in fs),
            "absorbed": sum(f.outcome == "absorbed" for f in fs),
            "via_driver_restart": sum(f.outcome == "driver restart" for f in fs),
            "not_recovered": sum(f.outcome.startswith("not") for f in fs),
            "as_promised": sum(bool(f.as_promised) for f in fs),
            "promised": EXPECTED[kind] + (f" (exit {EXPECTED_RC[kind]})" if kind in EXPECTED_RC else ""),
            "phases": dict(collections.Counter(f.phase for f in fs)),
            "recovery_s_median": rec[len(rec) // 2] if rec else None,
            "recovery_s_max": rec[-1] if rec else None,
        }
    fault_instances = {f.instance for f in bench.faults if f.driver_exit}
    exits = []
    for d in bench.drivers:
        if d.rc is None:
            continue
        cause = ("done" if d.rc == 0 else f"bench: {d.stopped_by_bench}" if d.stopped_by_bench else
                 "fault" if d.index in fault_instances else "unplanned (no fault injected)")
        exits.append({"driver": d.index, "rc": d.rc, "cause": cause, "said": d.error_lines()[:3],
                      "total_steps": d.total, "resumed_from_step": d.resumed_from,
                      "ready_after_s": round(d.ready_at - d.started, 1) if d.ready_at else None,
                      "steps": [s for _, s, _ in d.steps],
                      "failed_step_records": [s for _, s, failed in d.steps if failed],
                      "lived_s": round((d.exited_at or now()) - d.started, 1)})
    faults = []
    for f in bench.faults:
        rec = dataclasses.asdict(f)
        rec.pop("ctime")
        rec.pop("target_ended_at")
        rec["children"] = [title for _, _, title in f.children]
        rec["t"] = round(f.t - bench.t0, 1)
        faults.append(rec)
    return {
        "bench": "chaos",
        "machine": machine(),
        "load_average_start": [round(x, 2) for x in bench.load_before],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "seed": bench.args.seed, "minutes": bench.args.minutes, "fault_mix": bench.kinds,
        "overrides": bench.overrides(bench.drivers[-1].total if bench.drivers else 0),
        "stall_timeout_s": bench.stall_timeout(),
        "stall_timeout_configurable": True,  # always, since resources.stall_timeout_s exists
        "hang_grace_s": bench.hang_grace(),
        "wall_s": round(now() - bench.t0, 1),
        "first_start_ready_s": round(bench.drivers[0].ready_at - bench.drivers[0].started, 1)
        if bench.drivers and bench.drivers[0].ready_at else None,
        "chaos_s": round((bench.chaos_ended or now()) - bench.chaos_started, 1) if bench.chaos_started else 0.0,
        "step_s_median": round(bench.step_seconds(), 1),
        "steps": bench.drivers[-1].total if bench.drivers else 0,
        "driver_starts": len(bench.drivers),
        "driver_restarts": max(0, len(bench.drivers) - 1),
        "faults_injected": len(bench.faults),
        "faults_recovered": sum(not f.outcome.startswith("not") for f in bench.faults),
        "faults_as_promised": sum(bool(f.as_promised) for f in bench.faults),
        "by_kind": by_kind,
        "samples_lost": counts["samples_lost"],
        "samples_duplicated": counts["samples_duplicated"],
        "invariants": inv,
        "all_invariants_hold": all(v["ok"] for v in inv.values()),
        "aborted": bench.abort_reason,
        "faults": faults,
        "driver_exits": exits,
        "leftovers": bench.leftovers,
        "other_new_dev_shm_entries": counts["shm_new_other"][:40],
        "notes": bench.notes,
        "logs": bench.log_dir,
    }


# ------------------------------------------------------------------------------------ helpers
def read_records(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"torn_line": line[:80]})
    return out


def compress(values: list) -> str:
    """[1,2,3,5,6] -> '1-3,5-6' (order kept; a repeat or a step back starts a new run)."""
    if not values:
        return "none"
    runs, start, prev = [], values[0], values[0]
    for v in values[1:]:
        if isinstance(v, int) and isinstance(prev, int) and v == prev + 1:
            prev = v
            continue
        runs.append(f"{start}-{prev}" if start != prev else f"{start}")
        start = prev = v
    runs.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ",".join(runs)


def machine() -> dict:
    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
        flags = next((ln.split(":", 1)[1].split() for ln in out.splitlines() if ln.startswith("Flags")), [])
        native_bf16 = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
        model += f" ({', '.join(native_bf16)})" if native_bf16 else " (no native bf16)"
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}


def render_markdown(r: dict) -> str:
    """The tables of docs/chaos.md (between its markers) from a result."""
    m = r["machine"]
    lines = [f"Command: `{r['command']}`  ",
             f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gb']} GiB, shared with other test runs "
             f"(load average {r['load_average_start'][0]} at the start, {r['load_average_end'][0]} at the end)  ",
             f"Wall time {r['wall_s'] / 60:.1f} min: first start ready after {r['first_start_ready_s']} s, "
             f"{r['chaos_s'] / 60:.1f} min with faults, median step {r['step_s_median']} s; final step {r['steps']}; "
             f"driver started {r['driver_starts']} times; stall deadline {r['stall_timeout_s']} s, "
             f"hang grace {r['hang_grace_s']:g} s"
             + (f"; **aborted: {r['aborted']}**" if r["aborted"] else ""), "",
             "| fault | injected | recovered | absorbed by the run | via a driver restart | not recovered "
             "| as promised | promised | median / max s to the next step | phases hit |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for kind, k in r["by_kind"].items():
        phases = ", ".join(f"{p} {n}" for p, n in sorted(k["phases"].items())) or "-"
        lines.append(f"| {kind} | {k['injected']} | {k['recovered']} | {k['absorbed']} | {k['via_driver_restart']} | "
                     f"{k['not_recovered']} | {k['as_promised']} | {k['promised']} | "
                     f"{k['recovery_s_median']} / {k['recovery_s_max']} | {phases} |")
    lines += ["", f"Samples lost: {r['samples_lost']}, duplicated: {r['samples_duplicated']}.", "",
              "| invariant | holds | detail |", "|---|---|---|"]
    for name, v in r["invariants"].items():
        lines.append(f"| {name} | {'yes' if v['ok'] else '**no**'} | {v['detail'].replace('|', '/')} |")
    lines += ["", "| # | t (s) | fault | target | phase | after step | outcome | s to the next step | driver exit |",
              "|---:|---:|---|---|---|---:|---|---:|---|"]
    for i, f in enumerate(r["faults"], 1):
        ex = f["driver_exit"]
        exit_s = f"rc {ex['rc']} after {ex['after_s']} s: {' / '.join(ex['said'])[:220]}" if ex else "-"
        outcome = f["outcome"] + ("" if f["as_promised"] else " (**not as promised**)")
        if f.get("children_alive_later"):
            outcome += f"; its processes {', '.join(c['title'] for c in f['children_alive_later'])} still ran later"
        lines.append(f"| {i} | {f['t']} | {f['kind']} | {f['target'][:40]} | {f['phase']} | {f['step_before']} | "
                     f"{outcome} | {f['recovery_s']} | {exit_s.replace('|', '/')} |")
    lines += ["", "Driver starts:", ""]
    for e in r["driver_exits"]:
        lines.append(f"- driver {e['driver']} (total_steps {e['total_steps']}, resumed after step "
                     f"{e['resumed_from_step']}): ready after {e['ready_after_s']} s, steps {compress(e['steps'])}"
                     + (f" (failed-step records kept: {e['failed_step_records']})" if e["failed_step_records"] else "")
                     + f", exit {e['rc']} ({e['cause']}) after {e['lived_s']} s"
                     + (f": `{' / '.join(e['said'])[:300]}`" if e["said"] else ""))
    if r["leftovers"]:
        lines += ["", "Processes alive after their driver's exit:", ""]
        for lo in r["leftovers"]:
            fate = (f"ended on its own {lo['ended_on_its_own_after_s']} s after the exit" if lo["ended_on_its_own_after_s"]
                    else "killed by the bench" if lo["killed_by_bench"] else "left running")
            lines.append(f"- driver {lo['driver']} (exit {lo['driver_rc']}): pid {lo['pid']} `{lo['title']}` "
                         f"({lo['role']}, {lo['status']}, parent pid {lo['ppid']}), {fate}")
    if r["notes"]:
        lines += ["", "Notes: " + "; ".join(r["notes"])]
    return "\n".join(lines) + "\n"


def write_doc(path: str, result: dict, section: str = "") -> None:
    """Replace the ``<!-- chaos[:section]:begin -->`` ... ``end -->`` part of ``path`` with the result's tables."""
    name = f"chaos:{section}" if section else "chaos"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = open(path).read() if os.path.exists(path) else f"# Chaos bench\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(head + begin + "\n" + repo_relative(render_markdown(result)) + end + tail)
