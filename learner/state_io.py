"""What a learner writes into a checkpoint and reads back: DeepSpeed engine state and RNG state.

Nothing here unpickles arbitrary objects: RNG states are safetensors, and DeepSpeed's own files (which
DeepSpeed 0.19.8 reads with ``weights_only=False``) are read under ``weights_only_loads``, so whoever
can write ``output.dir`` cannot run code in the learner. Used by the policy trainer and the
reward-model trainer.
"""
from __future__ import annotations

import contextlib
import os

import torch


def save_engine_state(engine, folder: str, client_state: dict) -> None:
    """DeepSpeed state (weights, optimizer moments, counters) plus ``client_state`` into ``folder``."""
    engine.save_checkpoint(folder, tag="state", save_latest=False, client_state=client_state)


def deepspeed_checkpoint_classes() -> list:
    """The classes DeepSpeed's ZeRO optimizer states hold besides tensors and plain containers: a
    dataclass of two ints, an int enum and a static loss scale, none of which runs code when rebuilt."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [fragment_address, ZeroStageEnum, LossScaler]


@contextlib.contextmanager
def weights_only_loads():
    """Every ``torch.load`` inside runs with ``weights_only=True``: tensors, plain containers and
    ``deepspeed_checkpoint_classes`` load, any other object is an error, so a checkpoint file
    cannot run code in the learner.

    DeepSpeed 0.19.8 reads its checkpoints with ``TorchCheckpointEngine.load``, which passes
    ``weights_only=False``, and offers no other loader for them (its config only switches to the
    experimental writer engines). torch's documented ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` overrides an
    explicit ``weights_only=False``; ``torch.serialization.safe_globals`` admits DeepSpeed's classes.
    """
    variable = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(variable)
    os.environ[variable] = "1"
    try:
        with torch.serialization.safe_globals(deepspeed_checkpoint_classes()):
            yield
    finally:
        if before is None:
            del os.environ[variable]
        else:
            os.environ[variable] = before


def load_engine_state(engine, folder: str, what: str) -> dict:
    """Restore ``save_engine_state``'s folder (optimizer moments included); returns its client state.
    A folder without that state is an error naming ``what`` (DeepSpeed itself fails with a bare assert);
    so is a file in it that holds anything but tensors and DeepSpeed's plain classes."""
    import pickle

    if not os.path.isdir(os.path.join(folder, "state")):
        raise RuntimeError(f"no {what} state under {folder}")
    try:
        with weights_only_loads():
            _, client = engine.load_checkpoint(folder, tag="state", load_optimizer_states=True,
                                               load_lr_scheduler_states=False)
    except pickle.UnpicklingError as e:
        reason = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0].split(". ")[0].rstrip(".")
        raise RuntimeError(f"{what} state under {folder}: refused to load a file holding more than tensors "
                           f"({reason})") from e
    return client


RNG_FILE = "rng_rank{rank}.safetensors"


def save_rng_state(path: str, on_gpu: bool) -> None:
    """torch's RNG state (and every GPU's) as a safetensors file."""
    from safetensors.torch import save_file

    states = {"torch": torch.get_rng_state()}
    if on_gpu:
        states.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(states, path)


def load_rng_state(path: str, on_gpu: bool) -> None:
    """Restore ``save_rng_state``'s file. A checkpoint of an older version holds ``rng_rank<r>.pt``
    instead (the same tensors, pickled): it is read with ``weights_only=True``."""
    from safetensors.torch import load_file

    if os.path.exists(path):
        states = load_file(path)
        cuda = [states[f"cuda.{i}"] for i in range(len(states) - 1)]
    else:
        legacy = os.path.splitext(path)[0] + ".pt"
        if not os.path.exists(legacy):
            raise RuntimeError(f"no RNG state: {path} is missing")
        states = torch.load(legacy, weights_only=True)
        cuda = states.get("cuda") or []
    torch.set_rng_state(states["torch"])
    if on_gpu and cuda:
        torch.cuda.set_rng_state_all(cuda)
