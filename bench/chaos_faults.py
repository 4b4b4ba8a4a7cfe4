"""The chaos bench's faults: the kinds and what the README promises for each, the killer thread that injects
them (in the phase it drew), the watch on stopped processes and on a target's child processes, and each
fault's outcome at the end. The functions that act on the running bench take it (``bench``: a
``bench.chaos.Chaos``)."""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import TYPE_CHECKING, Callable, Optional

import psutil

from bench.chaos_processes import Driver, Tracked, Tracker, alive, classify, now, phase_of, proc_title

if TYPE_CHECKING:
    from bench.chaos import Chaos

ALL_FAULTS = ("kill-engine", "stop-engine", "kill-reward", "stop-reward", "kill-learner", "kill-driver",
              "term-driver")
KILL_ONLY = ("kill-engine", "kill-reward", "kill-learner", "kill-driver", "term-driver")

# the phases each fault kind draws from ("any": whenever the delay ends)
PHASES = {
    "kill-engine": ("generation", "sync", "any"),
    "stop-engine": ("generation", "sync", "any"),
    "kill-reward": ("scoring", "any"),
    "stop-reward": ("scoring", "any"),
    "kill-learner": ("update", "sync", "checkpoint", "any"),
    "kill-driver": ("generation", "update", "sync", "checkpoint", "any"),
    "term-driver": ("generation", "update", "sync", "checkpoint", "any"),
}
TARGET_ROLE = {"kill-engine": "engine", "stop-engine": "engine", "kill-reward": "reward",
               "stop-reward": "reward", "kill-learner": "learner", "kill-driver": "driver", "term-driver": "driver"}
SIGNAL = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP, "term": signal.SIGTERM}
# what the system promises for each kind (README "Failure handling"); anything else is a finding
EXPECTED = {"kill-engine": "absorbed", "stop-engine": "absorbed", "kill-reward": "absorbed",
            "stop-reward": "absorbed", "kill-learner": "driver restart", "kill-driver": "driver restart",
            "term-driver": "driver restart"}
EXPECTED_RC = {"kill-learner": 1, "kill-driver": -9, "term-driver": 143}  # exit status of the driver that took it


@dataclasses.dataclass
class Fault:
    kind: str
    t: float
    instance: int
    wanted_phase: str
    phase: str
    target: str
    pid: int
    step_before: int  # last step the run had logged
    engines_alive: int = 0
    ctime: float = 0.0
    # filled while the run goes on
    children: list = dataclasses.field(default_factory=list)  # the target's descendants when it was hit
    children_alive_later: Optional[list] = None  # those alive --orphan-check s after the target ended
    target_ended_at: Optional[float] = None
    continued_by_bench_after_s: Optional[float] = None
    target_gone_after_s: Optional[float] = None
    outcome: str = ""
    as_promised: Optional[bool] = None  # the outcome (and, for driver faults, the exit status) the README promises
    recovery_s: Optional[float] = None
    driver_exit: Optional[dict] = None
    system_said: list = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------------ the killer
def resolved(f: Fault, step_times: list[tuple[float, int, int]]) -> bool:
    """Whether the run logged a normal step after ``f`` (``step_times``: ``Chaos.step_times()``)."""
    return any(t > f.t for t, _, _ in step_times)


def reaction(f: Fault, drivers: list[Driver]) -> Optional[tuple[float, str]]:
    """The run's own word on an engine or reward worker fault: the first warning after it naming that
    role (an engine dropped, dead or hung; a reward worker restarted), from the driver it hit."""
    prefix = {"engine": "warning: rollout-engine", "reward": "warning: reward-worker"}.get(TARGET_ROLE[f.kind])
    if prefix is None:
        return None
    return next(((t, line) for t, line in drivers[f.instance].events if t > f.t and line.startswith(prefix)),
                None)


def settled(bench: Chaos, f: Fault) -> bool:
    """Whether the next fault may come: the run logged a step since ``f``, or (an engine or reward worker
    fault) the run said it dealt with it and a stopped target is no longer stopped."""
    if resolved(f, bench.step_times()):
        return True
    if reaction(f, bench.drivers) is None:
        return False
    return not f.kind.startswith("stop-") or f.target_gone_after_s is not None \
        or f.continued_by_bench_after_s is not None


def run_killer(bench: Chaos) -> None:
    """The killer thread: a fault every --min-gap..--max-gap s of a ready driver, until the chaos window ends."""
    try:
        _kill_until_deadline(bench)
    except Exception as e:  # noqa: BLE001 - a bench bug must not hang the run: say it and stop faulting
        bench.notes.append(f"killer thread crashed: {e!r}")
        bench.log(f"killer crashed: {e!r}")


def _kill_until_deadline(bench: Chaos) -> None:
    while not bench.killer_stop.is_set():
        if bench.faults and not settled(bench, bench.faults[-1]):
            bench.killer_stop.wait(0.5)
            continue
        d = bench.driver
        if d is None or not d.ready:
            bench.killer_stop.wait(0.5)
            continue
        delay = bench.rng.uniform(bench.args.min_gap, bench.args.max_gap)
        if bench.killer_stop.wait(delay) or bench.driver is not d or not d.ready:
            continue
        if now() >= bench.chaos_deadline():
            return
        kind = bench.rng.choice(bench.kinds)
        wanted = bench.rng.choice(PHASES[kind])
        inject(bench, d, kind, wanted)


def _actor_processes(tracker: Tracker, d: Driver) -> dict[str, list[tuple[Tracked, psutil.Process, str, Optional[str]]]]:
    return {role: tracker.live(d.index, role) for role in ("engine", "reward", "learner")}


def inject(bench: Chaos, d: Driver, kind: str, wanted: str) -> None:
    """Wait (up to --phase-wait s) for phase ``wanted`` of driver ``d``, pick a target of ``kind`` and signal it."""
    tracker = bench.tracker
    tracker.snapshot(d)
    role = TARGET_ROLE[kind]
    deadline = now() + (bench.args.phase_wait if wanted != "any" else 0)
    # the actor processes, refreshed every few seconds; their titles are read every 20 ms for the phase
    actors, refreshed = _actor_processes(tracker, d), now()
    while True:
        titles = {}
        for r, procs in actors.items():
            titles[r] = []
            for _, p, _, _ in procs:
                try:
                    titles[r].append(classify(proc_title(p))[1] if p.is_running() else None)
                except psutil.Error:
                    titles[r].append(None)
        phase = phase_of(titles)
        if wanted == "any" or phase == wanted or now() >= deadline:
            break
        if bench.killer_stop.is_set() or d.poll() is not None or not d.ready:
            return
        if now() - refreshed > 5:  # engines come and go
            tracker.snapshot(d)
            actors, refreshed = _actor_processes(tracker, d), now()
        time.sleep(0.02)
    if d.poll() is not None or bench.driver is not d:
        return
    engines_alive = len(tracker.live(d.index, "engine"))
    if role == "driver":
        pid, target = d.pid, "driver"
        try:
            ctime = psutil.Process(pid).create_time()
        except psutil.Error:  # it exited just now: no fault this time (the next draw waits for its successor)
            bench.notes.append(f"{kind}: the driver exited before the signal at {now() - bench.t0:.0f}s")
            return
    else:
        live = [(t, p, title) for t, p, title, _ in tracker.live(d.index, role)]
        if role == "engine":
            live = [x for x in live if classify(x[2])[1] != "__init__"] or live
            if engines_alive < 2:  # the pool's only engine: its death fails the step by design
                bench.notes.append(f"{kind}: skipped at {now() - bench.t0:.0f}s, only {engines_alive} engine alive")
                return
        if not live:
            bench.notes.append(f"{kind}: no {role} process found at {now() - bench.t0:.0f}s")
            return
        t, p, target = bench.rng.choice(live)
        pid, ctime = t.pid, t.ctime
    sig = SIGNAL[kind.split("-")[0]]
    children = []
    if role != "driver":
        try:
            children = [(c.pid, c.create_time(), proc_title(c)[:80]) for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            pass
    f = Fault(kind=kind, t=now(), instance=d.index, wanted_phase=wanted, phase=phase, target=target, pid=pid,
              step_before=bench.last_step(), engines_alive=engines_alive, ctime=ctime, children=children)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        bench.notes.append(f"{kind}: target {target} (pid {pid}) gone before the signal")
        return
    with bench.lock:
        bench.faults.append(f)
    bench.log(f"fault {len(bench.faults)}: {kind} -> {target} pid {pid} during {phase} "
              f"(wanted {wanted}; after step {f.step_before}, driver {d.index})")


# ------------------------------------------------------------------------------------ stopped processes
def watch_stopped(bench: Chaos) -> None:
    """A stopped target that is gone is noted; one still stopped after the hang grace with no step since is continued."""
    for f in bench.faults:
        if not f.kind.startswith("stop-") or f.continued_by_bench_after_s is not None \
                or f.target_gone_after_s is not None:
            continue
        p = alive(f.pid, f.ctime)
        if p is None:
            f.target_gone_after_s = round(now() - f.t, 1)
            bench.log(f"{f.kind}: pid {f.pid} is gone after {f.target_gone_after_s:.0f}s")
        elif not resolved(f, bench.step_times()) and now() - f.t > bench.hang_grace():
            continue_stopped(f, bench.log)


def check_orphans(bench: Chaos) -> None:
    """--orphan-check s after a fault: which of its target's descendants (an engine's EngineCore and vLLM
    worker, a reward worker's verifier processes) still run, though the target is gone?"""
    for f in bench.faults:
        if not f.children or f.children_alive_later is not None:
            continue
        if f.target_ended_at is None:
            if alive(f.pid, f.ctime) is None:
                f.target_ended_at = now()
            continue
        if now() - f.target_ended_at >= bench.args.orphan_check:
            f.children_alive_later = [{"pid": pid, "title": title} for pid, ctime, title in f.children
                                      if alive(pid, ctime) is not None]
            if f.children_alive_later:
                bench.log(f"fault {bench.faults.index(f) + 1} ({f.kind}): its target ended, its processes "
                          f"{[c['title'] for c in f.children_alive_later]} still run {bench.args.orphan_check:.0f}s later")


def finish_orphan_checks(faults: list[Fault]) -> None:
    """At the end: the orphan checks still pending (target ended, --orphan-check not yet passed), done now."""
    for f in faults:
        if f.children and f.children_alive_later is None and alive(f.pid, f.ctime) is None:
            f.children_alive_later = [{"pid": pid, "title": title} for pid, ctime, title in f.children
                                      if alive(pid, ctime) is not None]


def continue_stopped(f: Fault, log: Callable[[str], None]) -> None:
    try:
        os.kill(f.pid, signal.SIGCONT)
    except ProcessLookupError:
        return
    f.continued_by_bench_after_s = round(now() - f.t, 1)
    log(f"{f.kind}: pid {f.pid} still stopped after {f.continued_by_bench_after_s:.0f}s and no step since: "
        "SIGCONT from the bench")


def continue_all_stopped(faults: list[Fault], log: Callable[[str], None]) -> None:
    for f in faults:
        if f.kind.startswith("stop-") and f.continued_by_bench_after_s is None and alive(f.pid, f.ctime):
            try:
                if psutil.Process(f.pid).status() == psutil.STATUS_STOPPED:
                    continue_stopped(f, log)
            except psutil.Error:
                pass


# ------------------------------------------------------------------------------------ outcomes
def judge_outcomes(faults: list[Fault], drivers: list[Driver], step_times: list[tuple[float, int, int]]) -> None:
    """Each fault's outcome (absorbed, driver restart, not recovered), recovery time, driver exit and what the
    run said, and whether that is what the README promises."""
    for f in faults:
        nxt = next(((t, s, i) for t, s, i in step_times if t > f.t), None)
        d = drivers[f.instance]
        exited_first = d.exited_at is not None and (nxt is None or d.exited_at < nxt[0])
        if TARGET_ROLE[f.kind] == "driver" and d.exited_at is not None and d.exited_at >= f.t and not any(
                g.instance == f.instance and f.t < g.t < d.exited_at for g in faults):
            # a signalled driver may finish its step before it exits (SIGTERM during the update): its
            # exit is the outcome, and the recovery is the next step of the start after it
            exited_first = True
            nxt = next(((t, s, i) for t, s, i in step_times if t > d.exited_at), None)
        if exited_first:
            f.driver_exit = {"rc": d.rc, "said": d.error_lines()[:3], "after_s": round(d.exited_at - f.t, 1),
                             "stopped_by_bench": d.stopped_by_bench}
        f.system_said = [line[:300] for t, line in d.events if f.t <= t <= (nxt[0] if nxt else float("inf"))][:6]
        if nxt is not None:
            f.recovery_s = round(nxt[0] - f.t, 1)
        said = reaction(f, drivers)
        later = [i + 1 for i, g in enumerate(faults) if g.instance == f.instance and g.t > f.t
                 and (d.exited_at is None or g.t < d.exited_at)]
        if f.continued_by_bench_after_s is not None:
            f.outcome = "not recovered: still hung, continued by the bench (SIGCONT)"
        elif nxt is not None and nxt[2] == f.instance and not exited_first:
            f.outcome = "absorbed"
        elif exited_first and said is not None and later and faults[later[-1] - 1].t > said[0]:
            # dealt with (the run said so), then a later fault took this driver down before its next step
            f.outcome = "absorbed"
            f.driver_exit = None
            f.system_said.append(f"(driver then taken down by fault {later[-1]})")
        elif nxt is None:
            f.outcome = "not recovered: no step after it"
        else:
            f.outcome = "driver restart"
        f.as_promised = f.outcome == EXPECTED[f.kind]
        if f.as_promised and f.driver_exit and f.kind in EXPECTED_RC:
            f.as_promised = f.driver_exit["rc"] == EXPECTED_RC[f.kind]
