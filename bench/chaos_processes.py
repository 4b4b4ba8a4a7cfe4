"""The chaos bench's view of processes: Ray actor titles, the processes below a driver (tracked with their
start times), the step's phase read from the actors' titles, one driver start (``Driver``) and the
leftovers a driver leaves when it exits."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import threading
import time
from typing import Callable, Optional

import psutil

from orchestrator.remote import shm_files_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ACTOR_TITLE = re.compile(r"^ray::(?:[\w.-]+:)?(RolloutEngine|RewardWorker|LearnerWorker)(?:\.(\w+))?")
ROLE_OF_CLASS = {"RolloutEngine": "engine", "RewardWorker": "reward", "LearnerWorker": "learner"}
STEP_LINE = re.compile(r"^\[step (\d+)/(\d+)\]")
CHECKPOINT_LINE = re.compile(r"^checkpoint: .*step_(\d+) ")


def now() -> float:
    return time.monotonic()


# ------------------------------------------------------------------------------------ processes
def proc_title(p: psutil.Process) -> str:
    try:
        cmd = p.cmdline()
    except psutil.Error:
        cmd = []
    if cmd and cmd[0]:
        return cmd[0] if cmd[0].startswith(("ray::", "VLLM::")) or len(cmd) == 1 else " ".join(cmd)[:160]
    try:
        return p.name()
    except psutil.Error:
        return "?"


def classify(title: str) -> tuple[str, Optional[str]]:
    """(role, method) of a process from its title: engine/reward/learner (the actors; method while a call
    runs), enginecore, vllm (vLLM's other processes), ray (raylet, GCS, agents, idle workers), other."""
    m = ACTOR_TITLE.match(title)
    if m:
        return ROLE_OF_CLASS[m.group(1)], m.group(2)
    if "EngineCore" in title:
        return "enginecore", None
    if title.startswith("VLLM::"):
        return "vllm", None
    if title.startswith("ray::") or any(k in title for k in ("raylet", "gcs_server", "/ray/")):
        return "ray", None
    return "other", None


def alive(pid: int, ctime: float) -> Optional[psutil.Process]:
    """The process if it still runs (same start time, not a zombie)."""
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - ctime) > 0.01 or p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except psutil.Error:
        return None


@dataclasses.dataclass
class Tracked:
    pid: int
    ctime: float
    instance: int
    title: str
    role: str


SHM_SCAN_S = 5.0
"""How often the /dev/shm files a vLLM process maps are read (/proc/<pid>/maps)."""


class Tracker(threading.Thread):
    """Every process below the current driver, remembered with its start time (pid reuse), polled every second."""

    def __init__(self, current_driver: Callable[[], Optional["Driver"]]):
        super().__init__(daemon=True, name="tracker")
        self.current_driver = current_driver
        self.procs: dict[tuple[int, float], Tracked] = {}
        self.shm: set[str] = set()  # /dev/shm files mapped by vLLM processes of the run (its message queues)
        self._shm_scanned: dict[tuple[int, float], float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def snapshot(self, driver: "Driver") -> None:
        try:
            kids = psutil.Process(driver.pid).children(recursive=True)
        except psutil.Error:
            return
        for c in kids:
            try:
                key = (c.pid, c.create_time())
            except psutil.Error:
                continue
            title = proc_title(c)
            role, _ = classify(title)
            if title.startswith("VLLM::") and now() - self._shm_scanned.get(key, 0.0) > SHM_SCAN_S:
                self._shm_scanned[key] = now()
                found = shm_files_of([c.pid])
                with self.lock:
                    self.shm.update(found)
            with self.lock:
                t = self.procs.get(key)
                if t is None:
                    self.procs[key] = Tracked(c.pid, key[1], driver.index, title, role)
                elif role != "other" or t.role == "other":
                    t.title, t.role = title, role  # a Ray worker gets its actor title after it starts

    def run(self) -> None:
        while not self.stop.is_set():
            d = self.current_driver()
            if d is not None and d.proc.poll() is None:
                self.snapshot(d)
            self.stop.wait(1.0)

    def of_instance(self, index: int) -> list[Tracked]:
        with self.lock:
            return [t for t in self.procs.values() if t.instance == index]

    def live(self, index: int, role: str) -> list[tuple[Tracked, psutil.Process, str, Optional[str]]]:
        """Live processes of ``role`` of instance ``index``, with their current title and method."""
        out = []
        for t in self.of_instance(index):
            p = alive(t.pid, t.ctime)
            if p is None:
                continue
            title = proc_title(p)
            r, method = classify(title)
            if r == role:
                out.append((t, p, title, method))
        return out


def phase_of(titles: dict[str, list[Optional[str]]]) -> str:
    """The step's phase from the methods the actors run right now (None: idle)."""
    learner = [m for m in titles.get("learner", []) if m]
    engines = [m for m in titles.get("engine", []) if m and m != "heartbeat"]
    rewards = [m for m in titles.get("reward", []) if m and m != "heartbeat"]
    if "train_step" in learner:
        return "update"
    if "save_checkpoint" in learner:
        return "checkpoint"
    if "load_checkpoint" in learner:
        return "resume"
    if any(m.startswith("load_weights") for m in engines) or any(m.startswith("export_weights") for m in learner):
        return "sync"
    if "score" in rewards:
        return "scoring"
    if any(m.startswith("generate") for m in engines):
        return "generation"
    if "__init__" in engines:
        return "engine start"
    return "between calls"


# ------------------------------------------------------------------------------------ the driver
class Driver:
    """One start of ``grpo train``: its process, its stdout parsed into events, its stderr in a file."""

    def __init__(self, index: int, argv: list[str], env: dict, log_dir: str, run_dir: str, total: int,
                 expect_resume: bool):
        self.index, self.total = index, total
        self.argv = argv
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self.expect_resume = expect_resume
        self.out_path = os.path.join(log_dir, f"driver-{index}.out")
        self.err_path = os.path.join(log_dir, f"driver-{index}.err")
        self.started = now()
        self.ready_at: Optional[float] = None
        self.steps: list[tuple[float, int, bool]] = []  # (time, step, a failed step's record: step/failed_after_update)
        self.checkpoints: list[tuple[float, int]] = []
        self.events: list[tuple[float, str]] = []  # warnings the run printed (engine dropped, worker restarted, ...)
        self.resumed_from: Optional[int] = None
        self.result: Optional[dict] = None
        self.rc: Optional[int] = None
        self.exited_at: Optional[float] = None
        self.last_progress = self.started
        self.stopped_by_bench: Optional[str] = None  # why the bench signalled it (not a fault)
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self._err,
                                     text=True, bufsize=1, start_new_session=True)
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"driver-{index}-stdout")
        self._reader.start()

    def _read(self) -> None:
        with open(self.out_path, "w") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self._parse(line.rstrip("\n"), now())

    def _parse(self, line: str, t: float) -> None:
        if line.startswith("actors ready") and not self.expect_resume:
            self.ready_at, self.last_progress = t, t
        elif line.startswith("resumed from"):
            m = re.search(r"continuing at step (\d+)", line)
            self.resumed_from = int(m.group(1)) - 1 if m else None
            self.ready_at, self.last_progress = t, t
        elif STEP_LINE.match(line):
            step = int(STEP_LINE.match(line).group(1))
            self.steps.append((t, step, self._failed_record(step)))
            self.last_progress = t
            if self.ready_at is None:
                self.ready_at = t
        elif CHECKPOINT_LINE.match(line):
            self.checkpoints.append((t, int(CHECKPOINT_LINE.match(line).group(1))))
            self.last_progress = t
        elif line.startswith(("warning:", "rollout pool:")):
            self.events.append((t, line))
        elif line.startswith("{") and '"status"' in line:
            try:
                self.result = json.loads(line)
            except ValueError:
                pass

    def _failed_record(self, step: int) -> bool:
        """Whether metrics.jsonl's record of ``step`` is a failed step's (trained, then a later part failed:
        the driver keeps the record, checkpoints and exits 1). The logger writes the record before the line."""
        try:
            with open(self.metrics_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 262144))
                tail = f.read().decode(errors="replace")
        except OSError:
            return False
        for line in reversed(tail.splitlines()):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("step") == step:
                return bool(record.get("step/failed_after_update"))
        return False

    def normal_steps(self) -> list[tuple[float, int]]:
        return [(t, s) for t, s, failed in self.steps if not failed]

    def poll(self) -> Optional[int]:
        rc = self.proc.poll()
        if rc is not None and self.rc is None:
            self._reader.join(timeout=10)
            self._err.close()
            self.rc, self.exited_at = rc, now()
        return self.rc

    @property
    def ready(self) -> bool:
        return self.ready_at is not None and self.rc is None

    def error_lines(self) -> list[str]:
        """What the driver said about its end (stderr lines starting error:/stopped:/to resume:, or a traceback's last line)."""
        try:
            with open(self.err_path, errors="replace") as f:
                lines = [ln.rstrip("\n") for ln in f]
        except OSError:
            return []
        said = [ln for ln in lines if ln.startswith(("error:", "stopped:", "to resume:", "SIGTERM", "SIGINT"))]
        if not said:
            tb = [i for i, ln in enumerate(lines) if ln.startswith("Traceback")]
            if tb:
                said = [ln for ln in lines[tb[-1]:] if ln and not ln.startswith(" ")][-1:]
        return [s[:600] for s in said]


# ------------------------------------------------------------------------------------ leftovers
def watch_leftovers(d: Driver, tracker: Tracker, *, grace: float, watch: float, keep: bool,
                    log: Callable[[str], None], leftovers: list[dict], lock: threading.Lock) -> None:
    """After driver ``d`` exited: its processes still alive ``grace`` s later are leftovers. They are watched on
    up to ``watch`` s after the exit (do they end on their own?), then killed by pid (``keep``: left alone).
    Each one's record is appended to ``leftovers`` (under ``lock``)."""
    deadline = d.exited_at + grace
    while True:
        left = [(t, p) for t in tracker.of_instance(d.index) if (p := alive(t.pid, t.ctime)) is not None]
        if not left or now() >= deadline:
            break
        time.sleep(1.0)
    seen = {(t.pid, t.ctime) for t, _ in left}
    for _, p in list(left):  # what the leftovers started after the driver's death (the tracker never saw it)
        try:
            for c in p.children(recursive=True):
                key = (c.pid, c.create_time())
                if key not in seen:
                    title = proc_title(c)
                    left.append((Tracked(c.pid, key[1], d.index, title, classify(title)[0]), c))
                    seen.add(key)
        except psutil.Error:
            pass
    records = []
    for t, p in left:
        try:
            status, ppid, title = p.status(), p.ppid(), proc_title(p)
        except psutil.Error:
            continue
        records.append(({"driver": d.index, "driver_rc": d.rc, "pid": t.pid, "role": classify(title)[0],
                         "title": title[:120], "status": status, "ppid": ppid,
                         "alive_after_driver_exit_s": round(now() - d.exited_at, 1),
                         "ended_on_its_own_after_s": None, "killed_by_bench": False}, t))
    if records:
        log(f"driver {d.index} (rc {d.rc}) left {len(records)} processes after {grace:.0f}s: "
            + ", ".join(f"{r['pid']} {r['title'][:40]}" for r, _ in records))
    watch_until = d.exited_at + watch
    while now() < watch_until and any(alive(t.pid, t.ctime) for _, t in records):
        for rec, t in records:
            if rec["ended_on_its_own_after_s"] is None and alive(t.pid, t.ctime) is None:
                rec["ended_on_its_own_after_s"] = round(now() - d.exited_at, 1)
        time.sleep(1.0)
    for rec, t in records:
        p = alive(t.pid, t.ctime)
        if p is None:
            if rec["ended_on_its_own_after_s"] is None:
                rec["ended_on_its_own_after_s"] = round(now() - d.exited_at, 1)
        elif not keep:
            try:
                p.send_signal(signal.SIGCONT)
                p.kill()
                rec["killed_by_bench"] = True
            except psutil.Error:
                pass
        with lock:
            leftovers.append(rec)
