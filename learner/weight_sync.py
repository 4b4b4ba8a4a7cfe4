"""Sending the learner's weights to the rollout engines after every step.

Two paths, chosen by ``resources.weight_sync``:

* ``file`` (CPU, and any cluster without NCCL between learner and engines): the learner packs its
  weights, in the engines' dtype, into one safetensors blob; the driver hands the blob's Ray object
  reference to every engine, so the bytes go through Ray's object store (shared memory on one node,
  the object transfer protocol across nodes). Each engine writes it to /dev/shm and reloads it in
  every vLLM worker through ``worker_extension_cls`` / ``collective_rpc``.
* ``nccl`` (GPU): vLLM's own weight-transfer engine (``vllm.distributed.weight_transfer``). The
  learner (rank 0 of a NCCL group) broadcasts each parameter straight from GPU memory to the workers
  of one engine; there is one group per engine because each engine numbers its workers from 0.
"""
from __future__ import annotations

import socket
import time
from typing import Iterator, Sequence

import torch


def pack_state_dict(state: dict[str, torch.Tensor]) -> bytes:
    """Serialise tensors as a safetensors file held in memory."""
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()})


def unpack_state_dict(blob: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(blob)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class GatheredModuleSource:
    """A vLLM ``WeightSource`` over a (possibly ZeRO-3 partitioned) module: Hugging Face names, full tensors."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype):
        self.module, self.dtype = module, dtype

    def _named(self):
        # tied weights under both names: an engine may hold its own copy of the head (vLLM on CPU does)
        return list(self.module.named_parameters(remove_duplicate=False))

    def metadata(self):
        from vllm.distributed.weight_transfer.base import ParamMeta

        shapes = lambda p: tuple(getattr(p, "ds_shape", p.shape))  # noqa: E731 - ZeRO-3 keeps the full shape here
        return [ParamMeta(name, self.dtype, shapes(p)) for name, p in self._named()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        import deepspeed

        for name, param in self._named():
            with deepspeed.zero.GatheredParameters([param], enabled=hasattr(param, "ds_id")):
                yield name, param.detach().to(self.dtype)


class NcclWeightSender:
    """Learner side of the GPU path: one vLLM NCCL trainer engine per rollout engine, by engine name,
    so engines can join (``add``) and leave (``remove``) a running job."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype):
        self.source = GatheredModuleSource(module, dtype)
        self.senders: dict = {}

    def add(self, name: str, handle, tp: int) -> None:
        from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

        address = socket.gethostbyname(socket.gethostname())
        info = NCCLTrainerInitInfo(master_address=address, master_port=free_port(), world_size=1 + tp)
        client = RayVLLMWeightSyncClient(handle)
        self.senders[name] = NCCLTrainerWeightTransferEngine.trainer_init(info, client=client, source=self.source)

    def remove(self, name: str) -> None:
        sender = self.senders.pop(name, None)
        if sender is not None:
            try:
                sender.shutdown()
            except Exception:  # noqa: BLE001 - the engine on the other side may be dead
                pass

    def send(self, version: int, names: Sequence[str] | None = None) -> float:
        import ray

        t0 = time.time()
        for name in names if names is not None else list(self.senders):
            sender = self.senders[name]
            sender.send_weights()  # start, broadcast, finish (resets the engine's prefix cache)
            ray.get([h.update_weight_version.remote(str(version)) for h in sender.client.handles])
        return time.time() - t0

    def shutdown(self) -> None:
        for name in list(self.senders):
            self.remove(name)
