"""No checkpoint file can run code in the learner: the RNG state is safetensors, an older pickled one
and DeepSpeed's own files load with weights_only."""
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT


class _Payload:
    """Unpickled, it creates ``marker``: what a planted checkpoint file would do with os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_rng_state_is_saved_as_safetensors_and_restored(tmp_path):
    from safetensors.torch import load_file

    from learner.state_io import load_rng_state, save_rng_state

    path = str(tmp_path / "rng_rank0.safetensors")
    torch.manual_seed(3)
    save_rng_state(path, on_gpu=False)
    expected = torch.rand(4)
    assert set(load_file(path)) == {"torch"}
    torch.manual_seed(99)
    load_rng_state(path, on_gpu=False)
    assert torch.equal(torch.rand(4), expected)


def test_an_older_pickled_rng_state_loads_weights_only(tmp_path):
    from learner.state_io import load_rng_state

    torch.manual_seed(5)
    torch.save({"torch": torch.get_rng_state(), "cuda": None}, tmp_path / "rng_rank0.pt")  # an older version's file
    expected = torch.rand(2)
    load_rng_state(str(tmp_path / "rng_rank0.safetensors"), on_gpu=False)
    assert torch.equal(torch.rand(2), expected)
    marker = tmp_path / "code-ran"
    torch.save({"torch": torch.get_rng_state(), "cuda": _Payload(str(marker))}, tmp_path / "rng_rank0.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        load_rng_state(str(tmp_path / "rng_rank0.safetensors"), on_gpu=False)
    assert not marker.exists()
    os.remove(tmp_path / "rng_rank0.pt")
    with pytest.raises(RuntimeError, match="no RNG state: .*rng_rank0.safetensors is missing"):
        load_rng_state(str(tmp_path / "rng_rank0.safetensors"), on_gpu=False)


DEEPSPEED_ROUND_TRIP = """
import os, sys, torch
from learner.actor import _start_rank
from learner.state_io import load_engine_state, save_engine_state
from learner.trainer import deepspeed_config
from tests.learner.test_checkpoint_safety import _Payload

folder, stage = sys.argv[1], int(sys.argv[2])
_start_rank(0, 1)
import deepspeed
model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                                  config=deepspeed_config(1.0, 1, 1, 1, False, stage))
engine.backward(engine(torch.randn(2, 4)).sum())
engine.step()
save_engine_state(engine, folder, {"version": 7})
print("loaded", load_engine_state(engine, folder, "DeepSpeed")["version"], flush=True)
# someone who can write the checkpoint plants a pickle that runs code
state = os.path.join(folder, "state", "mp_rank_00_model_states.pt")
torch.save({**torch.load(state), "evil": _Payload(os.path.join(folder, "code-ran"))}, state)
try:
    load_engine_state(engine, folder, "DeepSpeed")
except RuntimeError as e:
    print("refused:", e, flush=True)
print("code ran:", os.path.exists(os.path.join(folder, "code-ran")), flush=True)
print("forced after:", os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD"), flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2])
def test_deepspeed_state_loads_weights_only(tmp_path, stage):
    """Under ZeRO-2 the optimizer states hold DeepSpeed classes, which load; a planted pickle does not."""
    proc = subprocess.run([sys.executable, "-c", DEEPSPEED_ROUND_TRIP, str(tmp_path / "ckpt"), str(stage)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded 7" in out
    assert "code ran: False" in out
    refused = next(line for line in out.splitlines() if line.startswith("refused:"))
    assert f"DeepSpeed state under {tmp_path / 'ckpt'}: refused to load a file holding more than tensors" in refused
    assert refused.endswith("(Unsupported global: GLOBAL io.open was not an allowed global by default)")
    assert "forced after: None" in out  # only DeepSpeed's load ran under it
