import os

import pytest
import torch
from safetensors.torch import load_file

from learner.weight_sync import mapped_safetensors, write_safetensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_file_is_valid_safetensors_with_tied_names(tmp_path, dtype):
    emb = torch.randn(10, 4, requires_grad=True)
    named = [("embed.weight", emb), ("lm_head.weight", emb),  # tied: same storage under two names
             ("w", torch.arange(6, dtype=torch.float32).reshape(2, 3).t()),  # non-contiguous
             ("scale", torch.tensor(3.0))]
    path = str(tmp_path / "w.safetensors")
    nbytes = write_safetensors(named, path, dtype)
    assert nbytes == (40 + 40 + 6 + 1) * dtype.itemsize
    out = load_file(path)
    assert set(out) == {n for n, _ in named}
    for name, t in named:
        assert out[name].dtype == dtype and torch.equal(out[name], t.detach().to(dtype)), name
    assert not os.path.exists(path + ".tmp")


def test_next_version_overwrites_the_file_in_place(tmp_path):
    """Same layout: the file keeps its inode (pages already allocated) and holds the new values;
    another layout: a new file replaces it."""
    path = str(tmp_path / "w.safetensors")
    write_safetensors([("a", torch.zeros(3, 2)), ("b", torch.ones(4))], path, torch.float32)
    inode = os.stat(path).st_ino
    write_safetensors([("a", torch.full((3, 2), 7.0)), ("b", torch.arange(4.0))], path, torch.float32)
    assert os.stat(path).st_ino == inode
    out = load_file(path)
    assert torch.equal(out["a"], torch.full((3, 2), 7.0)) and torch.equal(out["b"], torch.arange(4.0))
    write_safetensors([("a", torch.ones(5))], path, torch.float32)
    assert os.stat(path).st_ino != inode and torch.equal(load_file(path)["a"], torch.ones(5))
    assert not os.path.exists(path + ".tmp")


def test_engine_reads_the_file_as_views_without_copies(tmp_path):
    path = str(tmp_path / "w.safetensors")
    emb = torch.randn(6, 4)
    named = [("embed.weight", emb), ("lm_head.weight", emb), ("norm.weight", torch.randn(4))]
    for dtype in (torch.float32, torch.bfloat16):
        write_safetensors(named, path, dtype)
        got = dict(mapped_safetensors(path))
        assert list(got) == [n for n, _ in named]
        for name, t in named:
            assert got[name].dtype == dtype and torch.equal(got[name], t.to(dtype)), name
