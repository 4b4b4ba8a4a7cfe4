"""A real vLLM engine under the stall watch: while it decodes a long stream with no chunk to show, its
heartbeat thread answers with a step count that moves, so it is left alone; stopped with SIGSTOP in the
middle of a stream, it is declared hung after the stall deadline (not resources.timeout_s), killed, and
the vLLM processes it started (which a killed actor leaves behind) are killed too."""
import os
import signal
import time

import psutil
import pytest
import ray

from orchestrator.config import load_config
from orchestrator.remote import HEARTBEAT_GROUP
from orchestrator.types import Problem
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

STALL_S = 4.0
"""Well above a decoding step on a loaded 2-core machine (~0.1 s; the engine's slow first step is taken
at start-up, ``RolloutEngine._warm_up``), well below the busy stream's length."""
SLACK_S = 20.0


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not condition():
        time.sleep(0.5)
    return condition()


def test_real_engine_busy_is_kept_and_stopped_is_killed_with_its_vllm_processes(tiny_model):
    from rollout.group import RolloutError, RolloutGroup

    ray.init(address="local", num_cpus=4, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "VLLM_CONFIGURE_LOGGING": "0"}})
    stopped = None
    try:
        cfg = load_config(str(ROOT / "configs/tiny_cpu.yaml"), [
            f"model.path={tiny_model}", "rollout.num_workers=1", "rollout.group_size=4",
            "rollout.max_new_tokens=128", "resources.timeout_s=600"])
        cfg.resources.stall_timeout_s = STALL_S  # the field may not be in the config yet: set it on the object
        group = RolloutGroup(cfg, max_model_len=192)
        group.ready()
        name = group.names[0]
        _, helpers, shm_files = group._helpers[name]
        helper_pids = {pid for pid, _ in helpers}
        assert helper_pids, "the engine started no vLLM process"
        assert shm_files and all(os.path.exists(f"/dev/shm/{f}") for f in shm_files), shm_files  # vLLM's queues
        actor_pid = next(psutil.Process(pid).ppid() for pid in helper_pids
                         if psutil.Process(pid).ppid() not in helper_pids)
        problems = [Problem(uid=f"q{i}", question=f"{i}+1", gold=str(i + 1), task="arithmetic") for i in range(4)]
        prompt_ids = [[1, 2, 3, 4, 5 + i] for i in range(4)]

        # busy: the whole step comes as one chunk at the end, long after the stall deadline on this machine
        start = time.monotonic()
        episodes, stats = group.generate(problems, prompt_ids, on_chunk=lambda chunk: None, chunk_samples=10**6)
        busy_s = time.monotonic() - start
        assert busy_s > STALL_S, f"the stream took {busy_s:.1f}s: too short to show a busy engine is kept"
        assert len(episodes) == 16 and stats["rollout/engines_hung"] == 0 and group.names == [name]
        steps = ray.get(group.engines[name].heartbeat.options(concurrency_group=HEARTBEAT_GROUP).remote(), timeout=30)
        assert steps > 0
        print(f"busy stream: {busy_s:.1f}s, {steps} vLLM steps, stall deadline {STALL_S}s")

        # stopped after its first chunk: hung, killed with its vLLM processes; no engine is left
        def stop(chunk):
            nonlocal stopped
            if stopped is None:
                os.kill(actor_pid, signal.SIGSTOP)
                stopped = time.monotonic()

        with pytest.raises(RolloutError, match="no rollout engine is left"):
            group.generate(problems, prompt_ids, on_chunk=stop, chunk_samples=1)
        assert stopped is not None
        assert time.monotonic() - stopped < STALL_S + SLACK_S
        assert group.hung == [name] and group.names == []
        assert _wait_for(lambda: not _alive(actor_pid)), "the stopped engine actor was not killed"
        assert _wait_for(lambda: not any(_alive(pid) for pid in helper_pids)), \
            [pid for pid in helper_pids if _alive(pid)]
        assert not [f for f in shm_files if os.path.exists(f"/dev/shm/{f}")], "the killed engine's shared memory is left"
        group.shutdown()
    finally:
        if stopped is not None and _alive(actor_pid):
            os.kill(actor_pid, signal.SIGCONT)
        ray.shutdown()
