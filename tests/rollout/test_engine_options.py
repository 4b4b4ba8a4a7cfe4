"""Engine options that need no engine: the KV-cache size on CPU and GPU, and the reload-warning filter."""
import logging

import pytest

from orchestrator.config import ConfigError, load_config
from rollout.engine import CPU_KV_CACHE_GB, kv_cache_bytes
from rollout.worker_extension import RELOAD_LOGGER, ComputedBufferFilter, quiet_computed_buffers


def test_kv_cache_size():
    assert CPU_KV_CACHE_GB == 1.0
    assert kv_cache_bytes(None, on_gpu=False) == 2**30  # CPU: a fixed size, not a share of a NUMA node
    assert kv_cache_bytes(None, on_gpu=True) is None  # GPU: gpu_memory_utilization decides
    assert kv_cache_bytes(2.5, on_gpu=True) == int(2.5 * 2**30) and kv_cache_bytes(0.25, on_gpu=False) == 2**28
    assert load_config(None, ["rollout.kv_cache_gb=3"]).rollout.kv_cache_gb == 3.0
    with pytest.raises(ConfigError, match="rollout.kv_cache_gb=0.0 must be > 0"):
        load_config(None, ["rollout.kv_cache_gb=0"])


def _record(msg, *args, level=logging.WARNING):
    return logging.LogRecord(RELOAD_LOGGER, level, __file__, 1, msg, args, None)


def test_only_the_rotary_reload_warning_is_dropped(caplog):
    keep = ComputedBufferFilter().filter
    assert not keep(_record("%s: Failed to load weights", "RotaryEmbedding"))
    assert not keep(_record("%s: Failed to load weights", "Llama3RotaryEmbedding"))
    assert keep(_record("%s: Failed to load weights", "QKVParallelLinear"))  # a weight that did not arrive
    assert keep(_record("%s: Delayed processing", "RotaryEmbedding"))
    assert keep(_record("plain message"))
    quiet_computed_buffers()
    quiet_computed_buffers()  # installed once
    logger = logging.getLogger(RELOAD_LOGGER)
    assert sum(isinstance(f, ComputedBufferFilter) for f in logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=RELOAD_LOGGER):
        logger.warning("%s: Failed to load weights", "RotaryEmbedding")
        logger.warning("%s: Failed to load weights", "MergedColumnParallelLinear")
    assert [r.getMessage() for r in caplog.records] == ["MergedColumnParallelLinear: Failed to load weights"]
