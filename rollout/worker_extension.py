"""Methods added to every vLLM worker through ``worker_extension_cls`` (vLLM's supported hook).

vLLM mixes this class into its Worker, so ``self`` is the worker and ``self.model_runner`` owns the
model. The engine actor calls these through ``LLM.collective_rpc``. Arguments cross a process
boundary as msgpack, so weights never travel as tensors here: they travel as a file path (CPU path)
or over NCCL (GPU path, see ``rollout/nccl_sync.py``).
"""
from __future__ import annotations

import json
import mmap
from typing import Iterator

_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def mapped_safetensors(path: str) -> Iterator[tuple[str, "torch.Tensor"]]:
    """(name, tensor) for every tensor of a safetensors file, as views of the memory-mapped file.

    No tensor is copied: each view reads the file's pages in place (in /dev/shm, the pages the learner
    wrote), so the one copy a reload makes is vLLM's own, into its parameters. The map lives as long
    as the views do.
    """
    import torch

    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: shares pages until written
    head_len = int.from_bytes(mapped[:8], "little")
    header = json.loads(mapped[8 : 8 + head_len])
    base = 8 + head_len
    data = torch.frombuffer(mapped, dtype=torch.uint8)
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        if meta["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {meta['dtype']}; expected one of {sorted(_DTYPES)}")
        yield name, data[base + start : base + end].view(getattr(torch, _DTYPES[meta["dtype"]])).view(meta["shape"])


class WeightSyncExtension:
    """Receives new policy weights inside each vLLM worker."""

    def load_weights_from_file(self, path: str) -> int:
        """Reload every parameter from a safetensors file in checkpoint (Hugging Face) format.

        ``reload_weights`` re-applies vLLM's own loading and post-processing (layer repacking on CPU),
        which plain ``model.load_weights`` does not survive. Returns the number of tensors read.
        """
        count = 0

        def counted():
            nonlocal count
            for item in mapped_safetensors(path):
                count += 1
                yield item

        self.model_runner.reload_weights(weights_iterator=counted(), is_checkpoint_format=True)
        return count

    def weights_fingerprint(self) -> float:
        """Sum of |w| over all parameters in fp64: changes when any weight changes (for tests and checks)."""
        import torch

        total = 0.0
        for p in self.model_runner.model.parameters():
            total += float(p.detach().to(torch.float64).abs().sum())
        return total
