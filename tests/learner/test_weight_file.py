import os

import pytest
import torch
from safetensors.torch import load_file

from learner.weight_sync import write_safetensors


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
