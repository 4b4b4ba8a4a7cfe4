from rollout.group import engine_dtype, shard


def test_shard_contiguous_and_balanced():
    assert shard(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert shard([1], 3) == [[1], [], []]


def test_engine_dtype():
    assert engine_dtype("auto", on_gpu=False) == "float32"
    assert engine_dtype("auto", on_gpu=True) == "bfloat16"
    assert engine_dtype("bfloat16", on_gpu=False) == "bfloat16"
