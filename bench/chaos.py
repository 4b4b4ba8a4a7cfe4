"""Chaos bench: a tiny GRPO run on a real local Ray while a killer injects faults, then the invariants.

    python bench/chaos.py --minutes 4 --seed 0 [--faults kill-engine,stop-engine,...] [--out outputs/chaos]

The driver (``python -m orchestrator.cli train -c configs/tiny_cpu.yaml ...``, 2 vLLM engines, 2 reward
workers, one DeepSpeed learner, a checkpoint every step, ``output.resume=if_exists``) runs as a
subprocess. Every 10-40 s of a live run a killer thread picks a fault kind, waits (up to
``--phase-wait`` s) for the phase it drew (generation, scoring, update, sync, checkpoint; read from
the Ray workers' process titles, ``ray::RolloutEngine.generate_stream`` and the like), finds its target
among the driver's descendants and sends it a real signal:

    kill-engine     SIGKILL a ray::RolloutEngine actor process
    stop-engine     SIGSTOP a ray::RolloutEngine actor process (a hang)
    kill-reward     SIGKILL a ray::RewardWorker actor process
    stop-reward     SIGSTOP a ray::RewardWorker actor process
    kill-learner    SIGKILL the ray::LearnerWorker actor process
    kill-driver     SIGKILL the driver
    term-driver     SIGTERM the driver (it checkpoints and exits 143)

A driver that exits for any reason is started again (same overrides; ``output.resume=if_exists``
continues from its newest checkpoint). The next fault is drawn only once the run has logged a step
(a normal one, not the record a failed step keeps) after the previous fault, so each fault's outcome
is its own. A stopped process that neither the run kills nor gets past within ``--hang-grace`` s is
continued (SIGCONT) by the bench and the fault counts as not recovered.

Each start's ``total_steps`` is what fits in the rest of the chaos window (measured step and start-up
times) plus ``--final-steps``; when ``--minutes`` of faults have passed (counted from the first start
being ready; earlier if the rest would not fit in ``--budget-minutes``) the killer stops and the driver
trains on, without faults, to its ``total_steps``, and must exit 0 (a driver that dies meanwhile is
started again with the same total).

Every process the bench ever saw below a driver is tracked (pid + start time, polled every second).
After each driver exit, whatever of its processes is still alive after ``--leftover-grace`` s is a
leftover: recorded, watched until ``--leftover-watch`` s after the exit (does it end on its own?), then
killed by pid so that later starts have the memory (``--keep-leftovers`` leaves them running).

Checked at the end:

* every step is in ``metrics.jsonl`` exactly once (1..final, in order);
* ``samples.jsonl`` holds, for every step, the questions ``orchestrator.data.QuestionSampler`` (same
  data, seed and batch size) hands out for that step, and each epoch's questions exactly once;
* the final step count is right (the last start exits 0, its last record and checkpoint are the final step);
* nothing is left: no ``/dev/shm`` weight file of the run; no process of a driver (Ray, vLLM EngineCore
  and workers, verifier processes) alive ``--leftover-watch`` s after that driver's exit, none of a
  fault's target (an engine's EngineCore) alive ``--orphan-check`` s after the target ended, and none at
  the end (those that outlive their driver by over ``--leftover-grace`` s and then end on their own are
  reported, not failed).

Results: ``--record`` (default docs/bench/chaos.json) and, with ``--doc docs/chaos.md``, the tables
between the ``<!-- chaos:begin -->`` / ``<!-- chaos:end -->`` markers of that file. Exit status 0 when
every invariant holds, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import threading
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.chaos_faults import (  # noqa: E402  (after the path setup, like the other benches)
    ALL_FAULTS, KILL_ONLY, Fault, check_orphans, continue_all_stopped, resolved, run_killer, watch_stopped)
from bench.chaos_processes import Driver, Tracker, now, watch_leftovers  # noqa: E402
from bench.chaos_report import build_report, write_doc  # noqa: E402
from bench.results import command_line, repo_relative  # noqa: E402


# ------------------------------------------------------------------------------------ the bench
class Chaos:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
        unknown = [k for k in self.kinds if k not in ALL_FAULTS]
        if unknown:
            raise SystemExit(f"unknown fault kinds {unknown}; known: {', '.join(ALL_FAULTS)}")
        self.out = os.path.abspath(args.out)
        self.run_dir = os.path.join(self.out, "run")
        self.log_dir = os.path.join(self.out, "logs")
        self.t0 = now()
        self.driver: Optional[Driver] = None
        self.drivers: list[Driver] = []
        self.faults: list[Fault] = []
        self.notes: list[str] = []
        self.leftovers: list[dict] = []
        self.phase = "chaos"  # chaos (faults) -> final (no faults, the driver trains to its total_steps) -> done
        self.chaos_started: Optional[float] = None
        self.chaos_ended: Optional[float] = None
        self.final_total: Optional[int] = None  # set when the end of the chaos window shortens the run
        self.abort_reason: Optional[str] = None
        self.killer_stop = threading.Event()
        self.lock = threading.Lock()
        self.tracker = Tracker(lambda: self.driver)
        self._leftover_threads: list[threading.Thread] = []

    # -- config
    def overrides(self, total_steps: int) -> list[str]:
        a = self.args
        ov = [f"total_steps={total_steps}", f"seed={a.seed}", f"data.questions_per_step={a.questions_per_step}",
              f"data.arithmetic_train_size={a.train_size}", f"rollout.max_new_tokens={a.max_new_tokens}",
              "rollout.num_workers=2", "rollout.max_restarts=100", "rollout.kv_cache_gb=0.25",
              "reward.num_workers=2", "reward.max_restarts=100",
              "output.checkpoint_every=1", "output.keep_last=2", "output.resume=if_exists",
              f"output.dir={self.run_dir}", "logging.dashboard=false", "logging.ray_metrics=false"]
        if a.stall_timeout:
            ov.append(f"resources.stall_timeout_s={a.stall_timeout:g}")
        return ov + list(a.set or [])

    def stall_timeout(self) -> float:
        """The stall deadline the run works with: a ``--set resources.stall_timeout_s=`` (it comes last, so it
        wins), else --stall-timeout when given, else the configuration's default (``resources.stall_timeout_s``,
        orchestrator.remote.STALL_TIMEOUT_S; 0 = no stall detection)."""
        key = "resources.stall_timeout_s="
        for override in reversed(self.args.set or []):
            if override.startswith(key):
                return float(override[len(key):])
        if self.args.stall_timeout:
            return self.args.stall_timeout
        from orchestrator.config import ResourcesConfig

        return ResourcesConfig().stall_timeout_s

    def hang_grace(self) -> float:
        if self.args.hang_grace:
            return self.args.hang_grace
        stall = self.stall_timeout()
        return stall + 90 if stall else 120.0

    # -- timing: the run's total_steps is chosen so that it ends soon after the chaos window
    def step_seconds(self) -> float:
        """Median seconds per step (checkpoint included) seen so far, else --step-seconds."""
        gaps = []
        for d in self.drivers:
            steps = d.normal_steps()
            gaps += [t2 - t1 for (t1, s1), (t2, s2) in zip(steps, steps[1:]) if s2 == s1 + 1]
        return sorted(gaps)[len(gaps) // 2] if gaps else self.args.step_seconds

    def startup_seconds(self) -> float:
        """How long the last starts took to be ready, else --startup-seconds."""
        took = [d.ready_at - d.started for d in self.drivers if d.ready_at is not None]
        return max(took[-2:]) if took else self.args.startup_seconds

    def chaos_deadline(self) -> float:
        """When faults stop: --minutes after the first start was ready, or earlier when the last steps would
        not fit in --budget-minutes any more (a restart after that point may still run over: the bench then
        stops and reports what it has)."""
        start = self.chaos_started if self.chaos_started is not None else now() + self.startup_seconds()
        latest = self.t0 + self.args.budget_minutes * 60 - (self.args.final_steps + 1) * self.step_seconds() - 60
        return min(start + self.args.minutes * 60, latest)

    def newest_checkpoint(self) -> int:
        from orchestrator.checkpoint import list_checkpoints

        found = list_checkpoints(self.run_dir)
        return found[-1][0] if found else 0

    def total_for_start(self) -> int:
        """total_steps of the next start: the steps that fit in what is left of the chaos window after its
        start-up, plus --final-steps without faults; in the final phase, the last start's."""
        if self.phase != "chaos":
            return self.final_total or self.drivers[-1].total
        left = max(0.0, self.chaos_deadline() - now() - self.startup_seconds())  # steps begin after the start-up
        return self.newest_checkpoint() + int(left // self.step_seconds()) + self.args.final_steps

    # -- drivers
    def start_driver(self, total_steps: int) -> Driver:
        argv = [sys.executable, "-m", "orchestrator.cli", "train", "-c", "configs/tiny_cpu.yaml",
                *self.overrides(total_steps)]
        env = {**os.environ, "PYTHONPATH": ROOT, "VLLM_CONFIGURE_LOGGING": "0"}
        d = Driver(len(self.drivers), argv, env, self.log_dir, self.run_dir, total_steps, self.newest_checkpoint() > 0)
        self.drivers.append(d)
        self.driver = d
        self.log(f"driver {d.index} started (pid {d.pid}, total_steps={total_steps}"
                 f"{', resuming' if d.expect_resume else ''})")
        return d

    def log(self, msg: str) -> None:
        print(f"[chaos {now() - self.t0:7.1f}s] {msg}", flush=True)

    def last_step(self) -> int:
        steps = [s for d in self.drivers for _, s, _ in d.steps]
        return max(steps) if steps else 0

    def step_times(self) -> list[tuple[float, int, int]]:
        """(time, step, driver) of every step that completed normally (no failed step's record)."""
        return sorted((t, s, d.index) for d in self.drivers for t, s in d.normal_steps())

    def on_exit(self, d: Driver) -> None:
        lines = d.error_lines()
        self.log(f"driver {d.index} exited rc={d.rc} after step {self.last_step()}"
                 + (f": {' / '.join(lines)[:300]}" if lines else ""))
        a = self.args
        th = threading.Thread(target=watch_leftovers, args=(d, self.tracker), daemon=True, name=f"leftovers-{d.index}",
                              kwargs=dict(grace=a.leftover_grace, watch=a.leftover_watch, keep=a.keep_leftovers,
                                          log=self.log, leftovers=self.leftovers, lock=self.lock))
        th.start()
        self._leftover_threads.append(th)

    def stop_driver(self, d: Driver, why: str, wait_s: float = 120.0) -> None:
        self.log(f"{why}: SIGTERM to driver {d.index}")
        d.stopped_by_bench = why
        try:
            d.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = now() + wait_s
        while d.poll() is None and now() < deadline:
            time.sleep(0.5)
        if d.poll() is None:
            self.notes.append(f"driver {d.index} still running {wait_s:.0f}s after SIGTERM ({why}): SIGKILL")
            d.proc.kill()
            d.proc.wait()
            d.poll()

    # -- main loop
    def run(self) -> dict:
        a = self.args
        for path in (self.run_dir, self.log_dir):
            shutil.rmtree(path, ignore_errors=True)
        os.makedirs(self.log_dir)
        self.shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
        self.load_before = os.getloadavg()
        self.tracker.start()
        killer = threading.Thread(target=run_killer, args=(self,), daemon=True, name="killer")
        signals = {"n": 0}

        def on_signal(signum, frame):  # timeout(1) or Ctrl-C: wind down, still report
            signals["n"] += 1
            self.abort_reason = f"the bench got {signal.Signals(signum).name}"
            if signals["n"] > 1:
                raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

        self.start_driver(self.total_for_start())
        exits_without_progress, progress_mark = 0, 0
        while True:
            if self.abort_reason:
                break
            if now() - self.t0 > a.budget_minutes * 60:
                self.abort_reason = f"over the bench's budget of {a.budget_minutes:g} minutes"
                break
            d = self.driver
            if d.ready and self.chaos_started is None:
                self.chaos_started = now()
                self.log(f"driver ready after {now() - self.t0:.0f}s: faults {self.kinds} until "
                         f"{self.chaos_deadline() - self.t0:.0f}s")
                if self.kinds:
                    killer.start()
            watch_stopped(self)
            check_orphans(self)
            if self.phase == "chaos" and self.chaos_started is not None and now() >= self.chaos_deadline():
                self.end_chaos(killer, continue_stopped=False)  # a stop just before the end still gets its hang grace
                self.log(f"chaos over: no more faults; driver {d.index} trains on to step {d.total}")
                self.maybe_shorten(d)
            if d.poll() is not None:
                self.on_exit(d)
                if self.last_step() > progress_mark:
                    progress_mark, exits_without_progress = self.last_step(), 0
                else:
                    exits_without_progress += 1
                if d.rc == 0:
                    left = self.chaos_deadline() - now() if self.phase == "chaos" else 0.0
                    if left > self.startup_seconds() + 2 * self.step_seconds():
                        self.log(f"driver {d.index} reached its total_steps with {left:.0f}s of chaos left: more steps")
                        self.start_driver(self.total_for_start())
                        continue
                    self.end_chaos(killer)
                    self.phase = "done"
                    break
                if exits_without_progress > a.max_failures:
                    self.abort_reason = f"{exits_without_progress} driver exits in a row without a new step"
                    break
                self.start_driver(self.total_for_start())
                continue
            quiet = now() - d.last_progress
            if (quiet > a.progress_timeout if d.ready_at is not None else quiet > a.startup_timeout) and not any(
                    f.kind.startswith("stop-") and f.continued_by_bench_after_s is None
                    and not resolved(f, self.step_times()) for f in self.faults):
                self.notes.append(f"driver {d.index}: no progress for {quiet:.0f}s "
                                  f"({'last step ' + str(self.last_step()) if d.ready_at else 'never ready'}); "
                                  "stopped by the bench")
                self.stop_driver(d, "no progress", wait_s=60)
                continue
            time.sleep(0.5)
        if self.phase != "done":
            self.end_chaos(killer)
            d = self.driver
            if d is not None and d.poll() is None:
                self.stop_driver(d, f"aborting ({self.abort_reason})", wait_s=45)
                self.on_exit(d)
        for th in self._leftover_threads:
            th.join(timeout=max(0.0, a.leftover_watch + 10))
        self.tracker.stop.set()
        return build_report(self)

    def maybe_shorten(self, d: Driver) -> None:
        """At the end of the chaos window: when the running driver's remaining steps would not fit in the
        budget (its total_steps was sized with a step time that turned out too short) and a restart to the
        newest checkpoint + --final-steps ends sooner, stop it (SIGTERM: it checkpoints) and start that."""
        if not d.ready:
            return
        step_s, budget_end = self.step_seconds(), self.t0 + self.args.budget_minutes * 60
        done = max([s for _, s, _ in d.steps] + [d.resumed_from or 0])
        finish_running = now() + (d.total - done) * step_s
        shorter = self.newest_checkpoint() + self.args.final_steps
        finish_restart = now() + 60 + self.startup_seconds() + self.args.final_steps * step_s
        if finish_running > budget_end - 60 and finish_restart < finish_running and shorter < d.total:
            self.notes.append(f"driver {d.index} had {d.total - done} steps left at the end of the chaos window "
                              f"(~{finish_running - now():.0f}s at {step_s:.0f}s/step): stopped and resumed to step {shorter}")
            self.final_total = shorter
            self.stop_driver(d, f"too many steps left for the budget: resuming to step {shorter} instead")

    def end_chaos(self, killer: threading.Thread, continue_stopped: bool = True) -> None:
        """No more faults; ``continue_stopped``: SIGCONT whatever is still stopped (otherwise the main loop's
        ``watch_stopped`` does, for each after its hang grace, unless the run deals with it first)."""
        if self.phase == "chaos":
            self.phase = "final"
        if self.chaos_ended is None:
            self.chaos_ended = now()
        self.killer_stop.set()
        if killer.is_alive():
            killer.join(timeout=120)
        if continue_stopped:
            continue_all_stopped(self.faults, self.log)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=4.0, help="minutes of faults, from the first driver's actors being ready")
    p.add_argument("--seed", type=int, default=0, help="the killer's and the run's seed")
    p.add_argument("--faults", default=",".join(ALL_FAULTS),
                   help=f"comma-separated fault kinds (kills only: {','.join(KILL_ONLY)})")
    p.add_argument("--out", default="outputs/chaos", help="the run folder (<out>/run) and the drivers' logs (<out>/logs)")
    p.add_argument("--record", default="docs/bench/chaos.json", help="result JSON ('' = none)")
    p.add_argument("--doc", default="", help="markdown file whose chaos:begin/end section gets the tables")
    p.add_argument("--doc-section", default="", help="NAME: write the chaos:NAME:begin/end section of --doc instead")
    p.add_argument("--min-gap", type=float, default=10.0, help="seconds between faults: at least")
    p.add_argument("--max-gap", type=float, default=40.0, help="seconds between faults: at most")
    p.add_argument("--phase-wait", type=float, default=60.0, help="how long to wait for the drawn phase before injecting anyway")
    p.add_argument("--stall-timeout", type=float, default=30.0,
                   help="resources.stall_timeout_s of the run (0: leave the config's default)")
    p.add_argument("--hang-grace", type=float, default=0.0,
                   help="seconds a stopped process may hang the run before the bench continues it "
                        "(default: the run's stall deadline + 90 s, 120 s without stall detection)")
    p.add_argument("--final-steps", type=int, default=2, help="steps trained without faults after the chaos window")
    p.add_argument("--step-seconds", type=float, default=45.0, help="seconds per step until one is measured (sizes total_steps)")
    p.add_argument("--startup-seconds", type=float, default=300.0, help="seconds a start takes until one is measured")
    p.add_argument("--orphan-check", type=float, default=60.0,
                   help="seconds after a fault's target ended at which its child processes must be gone")
    p.add_argument("--leftover-grace", type=float, default=30.0, help="seconds a driver's processes get to end after it exits")
    p.add_argument("--leftover-watch", type=float, default=90.0,
                   help="leftovers are watched this long after the driver's exit (do they end on their own?), then killed")
    p.add_argument("--keep-leftovers", action="store_true", help="leave leftover processes running (default: kill them by pid once recorded)")
    p.add_argument("--progress-timeout", type=float, default=600.0, help="a ready driver with no step for this long is stopped and restarted")
    p.add_argument("--startup-timeout", type=float, default=1200.0, help="a driver not ready after this long is stopped and restarted")
    p.add_argument("--max-failures", type=int, default=4, help="give up after this many driver exits in a row without a new step")
    p.add_argument("--budget-minutes", type=float, default=13.5,
                   help="the whole bench stops (and reports) after this long; faults stop early enough for the rest to fit")
    p.add_argument("--questions-per-step", type=int, default=2)
    p.add_argument("--train-size", type=int, default=8, help="data.arithmetic_train_size (small: several epochs pass in a few minutes)")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="extra config override (repeatable)")
    args = p.parse_args(argv)
    bench = Chaos(args)
    result = bench.run()
    result["command"] = command_line()
    result = repo_relative(result)
    print(json.dumps({k: result[k] for k in ("faults_injected", "faults_recovered", "driver_restarts", "steps",
                                             "samples_lost", "samples_duplicated", "all_invariants_hold", "aborted")}))
    for name, v in result["invariants"].items():
        print(f"{'ok ' if v['ok'] else 'FAIL'} {name}: {v['detail']}", file=sys.stderr)
    if args.record:
        path = os.path.join(ROOT, args.record) if not os.path.isabs(args.record) else args.record
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    if args.doc:
        write_doc(os.path.join(ROOT, args.doc) if not os.path.isabs(args.doc) else args.doc, result, args.doc_section)
    return 0 if result["all_invariants_hold"] and not result["aborted"] else 1


if __name__ == "__main__":
    sys.exit(main())
