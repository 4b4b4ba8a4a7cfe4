"""Sending the learner's weights to the rollout engines after every step.

Three paths, chosen by ``resources.weight_sync``:

* ``shm`` (the default without GPUs): the learner writes its weights once, straight from the
  parameters, into a safetensors file in shared memory (``SharedWeightFile``: a private file under a
  name nobody can predict, removed at the end, or by the next start after a kill); engines on the
  same node reload that file in every vLLM worker. Two copies in all (parameters -> file -> engine), which
  is what the weight-sync benchmark compares with a plain memory copy. Engines on other nodes fall
  back to the object-store path below.
* ``file`` (any cluster without NCCL between learner and engines): the learner packs its
  weights, in the engines' dtype, into one safetensors blob; the driver hands the blob's Ray object
  reference to every engine, so the bytes go through Ray's object store (shared memory on one node,
  the object transfer protocol across nodes). Each engine writes it to /dev/shm and reloads it in
  every vLLM worker through ``worker_extension_cls`` / ``collective_rpc``.
* ``nccl`` (GPU): vLLM's own weight-transfer engine (``vllm.distributed.weight_transfer``). The
  learner (rank 0 of a NCCL group) packs parameters, straight from GPU memory, into buckets of
  ``resources.weight_sync_bucket_mb`` and broadcasts them to the workers of one engine, packing the
  next bucket while the last one is on the wire; there is one group per engine because each engine
  numbers its workers from 0.
"""
from __future__ import annotations

import logging
import re
import socket
import time
from typing import BinaryIO, Iterator, Sequence

import torch

log = logging.getLogger(__name__)


def pack_state_dict(state: dict[str, torch.Tensor]) -> bytes:
    """Serialise tensors as a safetensors file held in memory."""
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()})


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def write_safetensors(named: Iterator[tuple[str, torch.Tensor]] | Sequence[tuple[str, torch.Tensor]],
                      target: str | BinaryIO, dtype: torch.dtype) -> int:
    """Write (name, tensor) pairs as a safetensors file in ``dtype`` with one copy per tensor (straight
    from the tensor's memory into the file, converting dtype on the way only when needed); tied
    weights are written under each of their names. Returns the tensor bytes.

    ``target``: an open, seekable binary file (``SharedWeightFile``'s), overwritten from its start and
    cut to the new size; or a path. A file already at a path with the same layout (the previous
    step's weights) is overwritten in place: its pages stay allocated, so the write is a plain copy (a
    new file in /dev/shm first has every page allocated and zeroed by the kernel, which costs more
    than the copy). Otherwise the file is written to ``path``.tmp and renamed. Callers must not
    overwrite a file a reader is using.
    """
    import json
    import os

    tensors = [(name, t.detach()) for name, t in named]
    header, offset = {}, 0
    for name, t in tensors:
        size = t.numel() * dtype.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned

    def write(f: BinaryIO) -> None:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for _, t in tensors:
            t = t.to(device="cpu", dtype=dtype).contiguous()  # no-op for a CPU tensor already in dtype
            raw = t.view(torch.int16) if dtype in (torch.bfloat16, torch.float16) else t
            f.write(memoryview(raw.numpy()).cast("B"))

    if not isinstance(target, str):
        target.seek(0)
        write(target)
        target.truncate()
        target.flush()  # readers in other processes see the file, not this process's buffer
        return offset
    total = 8 + len(head) + offset
    in_place = os.path.exists(target) and os.path.getsize(target) == total
    written = target if in_place else target + ".tmp"
    with open(written, "r+b" if in_place else "wb") as f:
        write(f)
    if not in_place:
        os.replace(written, target)
    return offset


def mapped_safetensors(path: str) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of a safetensors file, as views of the memory-mapped file: the
    reader of ``write_safetensors``.

    No tensor is copied: each view reads the file's pages in place (in /dev/shm, the pages the learner
    wrote), so the one copy a reload makes is vLLM's own, into its parameters. The map lives as long
    as the views do.
    """
    import json
    import mmap

    dtypes = {code: dtype for dtype, code in _SAFETENSORS_DTYPES.items()}
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: shares pages until written
    head_len = int.from_bytes(mapped[:8], "little")
    header = json.loads(mapped[8 : 8 + head_len])
    base = 8 + head_len
    data = torch.frombuffer(mapped, dtype=torch.uint8)
    out = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in dtypes:
            raise ValueError(f"{path}: tensor {name} has dtype {meta['dtype']}; expected one of {sorted(dtypes)}")
        start, end = meta["data_offsets"]
        out.append((name, data[base + start : base + end].view(dtypes[meta["dtype"]]).view(meta["shape"])))
    return out


def unpack_state_dict(blob: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(blob)


def shm_dir() -> str:
    """Shared memory when the OS has it (a file there is a memory copy away from every process on the node)."""
    import os
    import tempfile

    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


_WEIGHT_FILE = re.compile(r"grpo-weights-(?P<run>[0-9a-f]+)-(?P<pid>[0-9]+)-[0-9a-f]{32}\.safetensors")


class SharedWeightFile:
    """The learner's weights for the engines on its node: one safetensors file in shared memory,
    named ``grpo-weights-<run id>-<writer pid>-<128 random bits>.safetensors``.

    Nobody can predict the name, so nobody can plant a file or a link there first; it is created
    with O_EXCL | O_NOFOLLOW (an existing file or symlink at the path is an error, never followed)
    and mode 0600, once, and every version is written through the descriptor opened then, never by
    path again. ``remove`` deletes it; a writer killed before that leaves it behind, and the next
    start of the same run deletes it (``sweep_weight_files``, by the run id and the dead pid).
    """

    def __init__(self, run_id: str, directory: str | None = None):
        import os
        import secrets

        if not re.fullmatch(r"[0-9a-f]+", run_id):
            raise ValueError(f"run id {run_id!r}: expected hex digits (it goes into a file name)")
        name = f"grpo-weights-{run_id}-{os.getpid()}-{secrets.token_hex(16)}.safetensors"
        self.path = os.path.join(directory or shm_dir(), name)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._file: BinaryIO | None = os.fdopen(fd, "r+b")

    def write(self, named: Iterator[tuple[str, torch.Tensor]] | Sequence[tuple[str, torch.Tensor]],
              dtype: torch.dtype) -> int:
        """The next version, over the last one (see ``write_safetensors``); returns the tensor bytes."""
        if self._file is None:
            raise RuntimeError(f"{self.path}: written after remove()")
        return write_safetensors(named, self._file, dtype)

    def remove(self) -> None:
        import os

        if self._file is not None:
            self._file.close()
            self._file = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def sweep_weight_files(run_id: str, directory: str | None = None) -> list[str]:
    """Delete the weight files of run ``run_id`` in ``directory`` (shared memory) whose writer is dead:
    what a killed learner (or a learner of a killed driver) left. Files of other runs, of live
    writers and of other users are left alone. Returns the deleted paths; each is logged."""
    import os

    from orchestrator.run_lock import pid_alive

    directory = directory or shm_dir()
    removed = []
    for name in os.listdir(directory):
        m = _WEIGHT_FILE.fullmatch(name)
        if not m or m["run"] != run_id or pid_alive(int(m["pid"])):
            continue
        path = os.path.join(directory, name)
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
            os.unlink(path)
        except FileNotFoundError:  # removed meanwhile
            continue
        log.warning("removed %s: a weight file of this run whose writer (pid %s) is gone", path, m["pid"])
        removed.append(path)
    return removed


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

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype, bucket_mb: int = 256):
        self.source = GatheredModuleSource(module, dtype)
        self.bucket_bytes = bucket_mb * 2**20
        self.senders: dict = {}

    def add(self, name: str, handle, tp: int) -> None:
        from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

        address = socket.gethostbyname(socket.gethostname())
        info = NCCLTrainerInitInfo(master_address=address, master_port=free_port(), world_size=1 + tp, rank=0,
                                   packed=True, packed_buffer_size_bytes=self.bucket_bytes, packed_num_buffers=2)
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
