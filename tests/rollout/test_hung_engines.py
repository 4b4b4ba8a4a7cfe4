"""A hung engine is replaced, not waited on (stand-in engines on a real Ray, no vLLM): an engine that
answers nothing (SIGSTOP) or stops stepping is declared hung after ``resources.stall_timeout_s``, killed,
and its work is redone on the others within the same call; a slow engine that keeps stepping is not
touched. The whole-call deadline (``resources.timeout_s``) is long enough that waiting on it fails the
test."""
import os
import signal
import time

import pytest
import ray

import rollout.group as group_module
from orchestrator.config import load_config
from orchestrator.types import Problem
from rollout.group import RolloutGroup
from tests.fakes.actors import FakeEngine, sigstop_actor

STALL_S = 2.0
TIMEOUT_S = 30.0
SLACK_S = 6.0
"""Time allowed beyond the stall deadline: noticing the silence, killing, redoing the work (loaded 2-core machine)."""


@pytest.fixture
def stopped():
    """Pids this test SIGSTOPs; any still stopped at the end are let go (the pool kills the ones it finds)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


@pytest.fixture
def pool(ray_local, monkeypatch):
    monkeypatch.setattr(group_module, "RolloutEngine", FakeEngine)
    cfg = load_config("configs/tiny_cpu.yaml", ["rollout.num_workers=3", "rollout.num_cpus_per_worker=0.5",
                                                "rollout.group_size=2", "rollout.max_restarts=1",
                                                f"resources.timeout_s={TIMEOUT_S}"])
    cfg.resources.stall_timeout_s = STALL_S  # the field may not be in the config yet: set it on the object
    g = RolloutGroup(cfg, max_model_len=64)
    g.ready()
    yield g
    g.shutdown()


def _problems(n):
    return [Problem(uid=f"q{i}", question=f"{i}+0", gold=str(i), task="arithmetic") for i in range(n)], [[i + 1] for i in range(n)]


def _sigstop(pool, name, stopped):
    return sigstop_actor(pool.engines[name].pid.remote(), stopped)


def _state(pid):
    """The process's state letter ('T' stopped, 'Z' zombie), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def _gone(pid, seconds=15.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _state(pid) not in (None, "Z"):
        time.sleep(0.1)
    return _state(pid) in (None, "Z")


def test_sigstopped_engine_mid_stream_is_killed_and_only_its_undelivered_samples_are_drawn_again(pool, stopped):
    problems, ids = _problems(9)  # 3 engines x 3 groups of 2 samples, chunks of 2 samples 0.5 s apart
    for handle in pool.engines.values():
        ray.get(handle.pace.remote(0.5))
    pid = ray.get(pool.engines["rollout-engine-1"].pid.remote())
    chunks = []

    def on_chunk(chunk):  # engine 1 is stopped right after its first chunk arrives
        chunks.append(chunk)
        if chunk[0].response_text == "rollout-engine-1" and not stopped:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)

    start = time.monotonic()
    episodes, stats = pool.generate(problems, ids, on_chunk=on_chunk, chunk_samples=2)
    elapsed = time.monotonic() - start
    assert stopped == [pid]
    assert elapsed < STALL_S + SLACK_S, elapsed
    # every sample delivered exactly once, in group order
    assert [e.group_id for e in episodes] == [g for g in range(9) for _ in range(2)]
    assert sorted(e.group_id for chunk in chunks for e in chunk) == [g for g in range(9) for _ in range(2)]
    assert [e.problem.uid for e in episodes[::2]] == [p.uid for p in problems]
    # engine 1 delivered its first chunk (group 3; a second may have been on its way) before it stopped;
    # the rest came from the others
    assert [e.group_id for e in episodes if e.response_text == "rollout-engine-1"] in ([3, 3], [3, 3, 4, 4])
    assert stats["rollout/engines_hung"] == 1 and stats["rollout/engines_lost"] == 1
    assert pool.names == ["rollout-engine-0", "rollout-engine-2"] and pool.lost == ["rollout-engine-1"]
    assert _gone(pid), _state(pid)  # killed, not left stopped
    # a replacement joins at the next step, within the restart budget, like a dead engine's
    assert pool.heal(lambda new: pool.sync_weights_blob(ray.put(b"w"), 1, list(new))) == ["rollout-engine-3"]
    assert pool.restarts_left == 0
    episodes, stats = pool.generate(*_problems(3), on_chunk=lambda chunk: None, chunk_samples=2)
    assert len(episodes) == 6 and stats["rollout/engines_hung"] == 0


def test_engine_that_answers_but_stops_stepping_is_hung_and_a_slow_stepping_one_is_not(pool):
    problems, ids = _problems(3)  # one group of 2 samples per engine, in one chunk
    ray.get(pool.engines["rollout-engine-1"].stall_after_chunks.remote(0))  # alive, never steps
    ray.get(pool.engines["rollout-engine-2"].pace.remote(2 * STALL_S))  # no chunk for 2 stall deadlines, but steps
    start = time.monotonic()
    episodes, stats = pool.generate(problems, ids, on_chunk=lambda chunk: None, chunk_samples=2)
    elapsed = time.monotonic() - start
    assert [(e.group_id, e.response_text) for e in episodes] == [
        (0, "rollout-engine-0"), (0, "rollout-engine-0"), (1, "rollout-engine-0"), (1, "rollout-engine-0"),
        (2, "rollout-engine-2"), (2, "rollout-engine-2")]
    assert stats["rollout/engines_hung"] == 1
    assert pool.names == ["rollout-engine-0", "rollout-engine-2"]  # the slow engine kept its place
    assert elapsed < 2 * STALL_S + SLACK_S, elapsed


def test_sigstopped_engine_in_a_whole_step_generation_is_replaced_and_a_busy_one_kept(pool, stopped):
    problems, ids = _problems(6)
    ray.get(pool.engines["rollout-engine-0"].busy.remote(2 * STALL_S))  # answers heartbeats while it works
    pid = _sigstop(pool, "rollout-engine-2", stopped)
    start = time.monotonic()
    episodes, stats = pool.generate(problems, ids)
    elapsed = time.monotonic() - start
    assert [e.group_id for e in episodes] == [g for g in range(6) for _ in range(2)]
    assert "rollout-engine-2" not in {e.response_text for e in episodes}
    assert stats["rollout/engines_hung"] == 1 and stats["rollout/engines_lost"] == 1
    assert pool.names == ["rollout-engine-0", "rollout-engine-1"]
    assert elapsed < 2 * STALL_S + SLACK_S, elapsed
    assert _gone(pid), _state(pid)


def test_sigstopped_engine_during_a_weight_sync_is_dropped_before_the_deadline(pool, stopped):
    pid = _sigstop(pool, "rollout-engine-1", stopped)
    start = time.monotonic()
    pool.sync_weights_blob(ray.put(b"weights"), 4)
    assert time.monotonic() - start < STALL_S + SLACK_S
    assert pool.names == ["rollout-engine-0", "rollout-engine-2"] and pool.lost == ["rollout-engine-1"]
    assert pool.hung == ["rollout-engine-1"]
    assert pool.policy_versions() == {"rollout-engine-0": 4, "rollout-engine-2": 4}
    assert _gone(pid), _state(pid)


def test_the_vllm_processes_of_a_killed_engine_are_killed_by_pid_and_start_time():
    import subprocess

    import psutil

    from orchestrator.remote import kill_processes

    child = subprocess.Popen(["sleep", "60"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        started = psutil.Process(child.pid).create_time()
        # a recorded pid whose start time differs is another process now: left alone
        assert kill_processes([(other.pid, started - 100.0), (child.pid, started)]) == [child.pid]
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert other.poll() is None
        assert kill_processes([(child.pid, started)]) == []  # gone: nothing to do
    finally:
        for proc in (child, other):
            proc.kill()
            proc.wait()


def test_shared_memory_of_killed_processes_is_found_and_removed():
    """What a killed vLLM engine leaves: its processes, and the /dev/shm files they mapped (vLLM's
    message queues, which only a clean shutdown unlinks)."""
    import subprocess
    import sys

    import psutil

    from orchestrator.remote import clean_up, shm_files_of

    name = f"grpo-test-shm-{os.getpid()}"
    mapper = subprocess.Popen([sys.executable, "-c", (
        "import mmap, os, sys, time\n"
        f"fd = os.open('/dev/shm/{name}', os.O_CREAT | os.O_RDWR, 0o600)\n"
        "os.ftruncate(fd, 4096)\n"
        "m = mmap.mmap(fd, 4096)\n"
        "print('mapped', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert mapper.stdout.readline() == "mapped\n"
        assert shm_files_of([mapper.pid]) == [name]
        assert shm_files_of([2 ** 22 + 7]) == []  # no such process: nothing
        started = psutil.Process(mapper.pid).create_time()
        killed, removed = clean_up([(mapper.pid, started)], [name, "../etc/passwd", "", ".."])
        assert killed == [mapper.pid] and removed == [name]  # names that are not plain are ignored
        assert mapper.wait(timeout=10) == -signal.SIGKILL and not os.path.exists(f"/dev/shm/{name}")
        assert clean_up([(mapper.pid, started)], [name]) == ([], [])  # done already: nothing to do
    finally:
        mapper.kill()
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")
