"""No vLLM process outlives its engine: after an engine is dropped from the pool (its actor killed, as
when it dies or the pool shrinks) and after a normal end, no EngineCore process is left."""
import time

import psutil
import pytest
import ray

from orchestrator.config import load_config
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def engine_cores() -> list[int]:
    """Pids of vLLM engine-core processes on this machine (vLLM titles them VLLM::EngineCore)."""
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "EngineCore" in (proc.info["name"] or "") or (cmdline and "EngineCore" in cmdline[0]):
            found.append(proc.info["pid"])
    return found


def _wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not condition():
        time.sleep(0.5)
    return condition()


def test_no_engine_core_outlives_its_engine(tiny_model):
    from rollout.group import RolloutGroup

    before = set(engine_cores())
    ray.init(address="local", num_cpus=4, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "VLLM_CONFIGURE_LOGGING": "0"}})
    try:
        cfg = load_config(str(ROOT / "configs/tiny_cpu.yaml"), [f"model.path={tiny_model}", "rollout.num_workers=2"])
        group = RolloutGroup(cfg, max_model_len=128)
        group.ready()
        assert _wait_for(lambda: len(set(engine_cores()) - before) == 2), engine_cores()
        first = set(engine_cores()) - before
        group.scale_to(1)  # drops (kills) one engine actor
        assert _wait_for(lambda: len(set(engine_cores()) - before) == 1), engine_cores()
        assert set(engine_cores()) - before < first
        group.shutdown()  # the normal end of a run
        assert _wait_for(lambda: not set(engine_cores()) - before), engine_cores()
    finally:
        ray.shutdown()
    assert not set(engine_cores()) - before
