"""Helpers for calling groups of Ray actors: contiguous sharding, deadline-bound gathering and telling a
hung actor from a busy one.

Every remote call in the system goes through ``gather`` so that a late, failed or dead actor is
named in the error instead of hanging the run. Calls whose work can be redone elsewhere (generation,
scoring, weight syncs) also take a ``StallWatch``: an actor that shows no sign of progress for the
watch's stall deadline is declared hung (``ActorHung``), well before the whole call's deadline, and its
owner kills it and redoes its work like a dead actor's.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Mapping, Optional, Sequence

HEARTBEAT_GROUP = "heartbeat"
HEARTBEAT_ACTOR = {"concurrency_groups": {HEARTBEAT_GROUP: 1}}
"""``ray.remote(**HEARTBEAT_ACTOR)(cls)``: the actor answers ``heartbeat()`` on a thread of its own while
its other methods run (on the default group, one at a time, as before). A stopped or frozen process
answers nothing, which is how a ``StallWatch`` tells it from a busy one."""

STALL_TIMEOUT_S = 120.0
"""Default of ``resources.stall_timeout_s`` (and of ``RewardPool``'s stall deadline outside a configuration)."""

HEARTBEAT_MAX_INTERVAL_S = 5.0
"""A watched actor is asked for a heartbeat every stall deadline / 4, never more than this many seconds apart."""


def shard_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges splitting n items into ``parts`` near-equal shards (earlier ones larger)."""
    size, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


class ActorDied:
    """Marker returned by ``gather_tolerating_deaths`` in place of a dead actor's answer."""

    def __init__(self, name: str, error: BaseException):
        self.name, self.error = name, error

    def __repr__(self) -> str:
        return f"ActorDied({self.name})"


class ActorHung(ActorDied):
    """Marker in place of the answer of an actor that showed no progress for the stall deadline. It is
    alive as far as Ray knows: its owner must kill it, then redoes its work as for a dead one."""

    def __init__(self, name: str, silent_s: float, stall_s: float):
        super().__init__(name, TimeoutError(f"{name} showed no progress for {silent_s:.1f}s"))
        self.silent_s, self.stall_s = silent_s, stall_s

    @property
    def reason(self) -> str:
        return f"hung (no progress for {self.silent_s:.1f}s, stall deadline {self.stall_s:g}s)"

    def __repr__(self) -> str:
        return f"ActorHung({self.name}, {self.silent_s:.1f}s)"


class StallWatch:
    """Tells a hung actor from a busy one while calls to it are outstanding.

    Each watched actor (``handles``: name -> actor started with ``HEARTBEAT_ACTOR``) is asked
    ``heartbeat()`` every ``interval_s``, one question in flight at a time; the answer is its progress
    counter. A sign of life is an answered heartbeat or a result the caller reports with ``saw`` (a
    streamed chunk). With ``must_advance`` a heartbeat counts only when its counter has moved since the
    one before: for calls that move it as they work (streamed generation counts engine steps), so an
    actor that is alive but stuck is caught too; without, an answer is enough (work whose progress the
    actor cannot count, bounded by its own deadlines). An actor silent for ``stall_s`` is hung
    (``hung``). ``stall_s`` = 0: no heartbeats, nothing is ever hung (only the caller's deadline counts).
    Not thread-safe: one watch per waiting loop.
    """

    def __init__(self, handles: Mapping[str, Any], stall_s: float, must_advance: bool = False):
        if stall_s < 0:
            raise ValueError(f"stall deadline must be >= 0 (0 = off), got {stall_s}")
        self.handles, self.stall_s, self.must_advance = dict(handles), float(stall_s), must_advance
        self.interval_s = min(max(self.stall_s / 4, 0.05), HEARTBEAT_MAX_INTERVAL_S)
        now = time.monotonic()
        self._last_sign = {name: now for name in self.handles} if self.stall_s else {}
        self._due = dict(self._last_sign)  # when each actor is next asked
        self._progress: dict[str, Any] = {}
        self._asking: dict[Any, str] = {}  # heartbeat ObjectRef in flight -> actor name

    def saw(self, name: str) -> None:
        """``name`` delivered something: a sign of life."""
        if name in self._last_sign:
            self._last_sign[name] = time.monotonic()

    def forget(self, name: str) -> None:
        """Stop watching ``name`` (its call has answered, failed or been given up)."""
        for table in (self._last_sign, self._due, self._progress):
            table.pop(name, None)
        self._asking = {ref: n for ref, n in self._asking.items() if n != name}

    def wait(self, refs: Sequence[Any], deadline: float) -> list:
        """``ray.wait`` for one of ``refs`` (ObjectRefs or streaming generators) until ``deadline``
        (time.monotonic), waking to ask heartbeats and to notice stalls. Returns the ready ones among
        ``refs``, possibly none: the caller then looks at ``hung`` and its deadline."""
        import ray

        now = time.monotonic()
        for name, due in self._due.items():
            if due <= now:  # not asked yet, or answered interval_s ago
                self._asking[self.handles[name].heartbeat.options(concurrency_group=HEARTBEAT_GROUP).remote()] = name
                self._due[name] = math.inf  # until it answers
        wake = min([deadline, *self._due.values(), *(t + self.stall_s for t in self._last_sign.values())])
        ready, _ = ray.wait(list(refs) + list(self._asking), num_returns=1, timeout=max(0.0, wake - now))
        answered = [ref for ref in ready if isinstance(ref, ray.ObjectRef) and ref in self._asking]
        for ref in answered:
            self._heard(self._asking.pop(ref), ref)
        return [ref for ref in ready if not any(ref is a for a in answered)]

    def _heard(self, name: str, ref) -> None:
        import ray

        try:
            progress = ray.get(ref)
        except ray.exceptions.RayActorError:
            return  # dead (not asked again): the call itself says so
        except ray.exceptions.RayTaskError as err:
            raise task_failure("heartbeat", name, err) from err
        now = time.monotonic()
        self._due[name] = now + self.interval_s
        if not self.must_advance or (name in self._progress and progress != self._progress[name]):
            self._last_sign[name] = now  # (the first answer is only the baseline to move from)
        self._progress[name] = progress

    def hung(self) -> list[ActorHung]:
        """The watched actors silent for longer than the stall deadline; they are no longer watched."""
        now = time.monotonic()
        found = [ActorHung(name, now - t, self.stall_s) for name, t in self._last_sign.items()
                 if now - t > self.stall_s]
        for marker in found:
            self.forget(marker.name)
        return found


def task_failure(what: str, name: str, err: BaseException, error_cls: type = RuntimeError) -> BaseException:
    """``error_cls`` naming the actor whose call raised ``err`` (a RayTaskError), with the actor's own
    exception as the message rather than Ray's wrapper."""
    cause = err.cause if getattr(err, "cause", None) is not None else err
    return error_cls(f"{what}: {name} failed: {cause}")


def _answer(name: str, ref, timeout_s: float, what: str, error_cls: type):
    """One call's value, ``ActorDied`` if its actor died; a late or failed call raises ``error_cls``."""
    import ray

    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as err:
        raise error_cls(f"{what}: {name} did not answer within {timeout_s:.1f}s") from err
    except ray.exceptions.RayActorError as err:
        return ActorDied(name, err)
    except ray.exceptions.RayTaskError as err:
        raise task_failure(what, name, err, error_cls) from err


def gather_tolerating_deaths(calls: Sequence[tuple[str, "object"]], timeout_s: float, what: str,
                             error_cls: type = RuntimeError, watch: Optional[StallWatch] = None) -> list:
    """ray.get every (actor name, ObjectRef) under one deadline. An actor that died answers
    ``ActorDied`` (the caller redoes its work elsewhere); with ``watch``, one that shows no progress for
    the watch's stall deadline answers ``ActorHung`` (the caller kills it, then the same); a late actor
    or a failed call raises ``error_cls`` naming it."""
    import ray

    if watch is None:
        refs = [ref for _, ref in calls]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        ready_set = set(ready)
        late = [name for name, ref in calls if ref not in ready_set]
        if late:
            raise error_cls(f"{what}: {', '.join(late)} did not answer within {timeout_s:.1f}s")
        return [_answer(name, ref, timeout_s, what, error_cls) for name, ref in calls]
    if len({name for name, _ in calls}) != len(calls):
        raise ValueError(f"{what}: one call per actor under a stall watch, got {[n for n, _ in calls]}")
    deadline = time.monotonic() + timeout_s
    pending = dict(enumerate(calls))
    values: dict[int, object] = {}
    while pending:
        ready = set(watch.wait([ref for _, ref in pending.values()], deadline))
        for i, (name, ref) in list(pending.items()):
            if ref in ready:
                values[i] = _answer(name, ref, timeout_s, what, error_cls)
                watch.forget(name)
                del pending[i]
        by_name = {name: i for i, (name, _) in pending.items()}
        for marker in watch.hung():
            if marker.name in by_name:
                values[by_name[marker.name]] = marker
                del pending[by_name[marker.name]]
        if pending and time.monotonic() >= deadline:
            late = ", ".join(name for name, _ in pending.values())
            raise error_cls(f"{what}: {late} did not answer within {timeout_s:.1f}s")
    return [values[i] for i in range(len(calls))]


def gather(calls: Sequence[tuple[str, "object"]], timeout_s: float, what: str, error_cls: type = RuntimeError) -> list:
    """Every answer, under one deadline; a late, failed or dead actor raises ``error_cls`` naming it."""
    values = gather_tolerating_deaths(calls, timeout_s, what, error_cls)
    for value in values:
        if isinstance(value, ActorDied):
            raise error_cls(f"{what}: {value.name} died: {value.error}") from value.error
    return values


def kill_processes(processes: Sequence[tuple[int, float]]) -> list[int]:
    """SIGKILL each (pid, start time) still running as the same process (a pid now used by another
    process is left alone); returns the pids killed. Runs on the processes' node."""
    import psutil

    killed = []
    for pid, started in processes:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - started) < 1e-3:
                proc.kill()
                killed.append(pid)
        except psutil.Error:  # already gone
            pass
    return killed


SHM_DIR = "/dev/shm"


def shm_files_of(pids: Sequence[int]) -> list[str]:
    """Names of the files in /dev/shm that the processes ``pids`` map (shared-memory segments: vLLM's
    message queues between its engine core and workers, 160-240 MiB each here). Read from
    /proc/<pid>/maps; a process that is gone, or a system without /proc, gives none."""
    names = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                lines = f.readlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
            path = fields[5].strip() if len(fields) == 6 else ""
            if path.startswith(SHM_DIR + "/") and not path.endswith(" (deleted)"):
                names.add(os.path.basename(path))
    return sorted(names)


def clean_up(processes: Sequence[tuple[int, float]], shm_files: Sequence[str] = ()) -> tuple[list[int], list[str]]:
    """``kill_processes``, then remove the named /dev/shm files they mapped: a process that is killed
    cannot unlink its shared memory, which stays in RAM (tmpfs) until removed. Returns (pids killed,
    files removed); a name that is not a plain file name in /dev/shm is ignored. Runs on their node."""
    killed = kill_processes(processes)
    removed = []
    for name in shm_files:
        if not name or name != os.path.basename(name) or name in (".", ".."):
            continue
        try:
            os.unlink(os.path.join(SHM_DIR, name))  # unlink never follows a symlink
            removed.append(name)
        except FileNotFoundError:  # shut down cleanly: vLLM removed it
            pass
    return killed, removed


def clean_up_on(node_id: str, processes: Sequence[tuple[int, float]], shm_files: Sequence[str],
                timeout_s: float) -> tuple[list[int], list[str]]:
    """``clean_up`` on Ray node ``node_id``, by a task pinned there (this module imports little, so the
    task starts fast); the errors of a node that cannot run it in ``timeout_s`` are Ray's."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(clean_up).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
    return ray.get(task.remote(list(processes), list(shm_files)), timeout=timeout_s)
