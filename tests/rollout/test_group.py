from orchestrator.remote import shard_bounds
from rollout.group import engine_dtype


def test_shard_bounds_contiguous_and_balanced():
    assert shard_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert shard_bounds(5, 2) == [(0, 3), (3, 5)]
    assert shard_bounds(2, 3) == [(0, 1), (1, 2), (2, 2)]
    assert shard_bounds(0, 1) == [(0, 0)]


def test_engine_dtype():
    assert engine_dtype("auto", on_gpu=False) == "float32"
    assert engine_dtype("auto", on_gpu=True) == "bfloat16"
    assert engine_dtype("bfloat16", on_gpu=False) == "bfloat16"
