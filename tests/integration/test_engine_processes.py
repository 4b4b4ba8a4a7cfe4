"""No vLLM process outlives its engine: after an engine is dropped from the pool (its actor killed, as
when it dies or the pool shrinks) and after a normal end, no EngineCore process is left."""
import time

import psutil
import pytest
import ray

from orchestrator.config import load_config
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def engine_cores(session_dir: str) -> set[int]:
    """Pids of the vLLM engine-core processes (titled VLLM::EngineCore) started by this Ray session's
    engine actors: other runs on the machine do not count."""
    found = set()
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "EngineCore" not in (proc.info["name"] or "") and not (cmdline and "EngineCore" in cmdline[0]):
            continue
        try:
            raylet = next((p for p in proc.parents() if p.name() == "raylet"), None)
            if raylet is not None and any(session_dir in arg for arg in raylet.cmdline()):
                found.add(proc.info["pid"])
        except psutil.Error:
            continue
    return found


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE}


def _wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not condition():
        time.sleep(0.5)
    return condition()


def test_no_engine_core_outlives_its_engine(tiny_model):
    from ray._private.worker import global_worker

    from rollout.group import RolloutGroup

    ray.init(address="local", num_cpus=4, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "VLLM_CONFIGURE_LOGGING": "0"}})
    try:
        session = global_worker.node.get_session_dir_path()
        cfg = load_config(str(ROOT / "configs/tiny_cpu.yaml"), [f"model.path={tiny_model}", "rollout.num_workers=2"])
        group = RolloutGroup(cfg, max_model_len=128)
        group.ready()
        assert _wait_for(lambda: len(engine_cores(session)) == 2), engine_cores(session)
        cores = engine_cores(session)
        group.scale_to(1)  # drops (kills) one engine actor
        assert _wait_for(lambda: len(_alive(cores)) == 1), _alive(cores)
        group.shutdown()  # the normal end of a run
        assert _wait_for(lambda: not _alive(cores)), _alive(cores)
    finally:
        ray.shutdown()
    assert not _alive(cores)
