"""Methods added to every vLLM worker through ``worker_extension_cls`` (vLLM's supported hook).

vLLM mixes this class into its Worker, so ``self`` is the worker and ``self.model_runner`` owns the
model. The engine actor calls these through ``LLM.collective_rpc``. Arguments cross a process
boundary as msgpack, so weights never travel as tensors here: they travel as a file path (CPU path)
or over NCCL (GPU path, see ``rollout/nccl_sync.py``).
"""
from __future__ import annotations

import logging

RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
"""The vLLM logger that reports layers whose weights a reload did not fill."""


class ComputedBufferFilter(logging.Filter):
    """Drops vLLM's "<layer>: Failed to load weights" warning for rotary-embedding layers.

    At every reload vLLM warns about each layer that has tensors but received none. A rotary embedding's
    only tensor is its cos/sin cache, computed from the config and never part of a checkpoint, so the
    warning is always expected there. Every other layer's warning still passes: that one means a
    weight really did not arrive."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.msg == "%s: Failed to load weights" and args and str(args[0]).endswith("RotaryEmbedding"))


def quiet_computed_buffers() -> None:
    """Install ComputedBufferFilter once in this process (a worker: the filter lives where vLLM logs)."""
    logger = logging.getLogger(RELOAD_LOGGER)
    if not any(isinstance(f, ComputedBufferFilter) for f in logger.filters):
        logger.addFilter(ComputedBufferFilter())


class WeightSyncExtension:
    """Receives new policy weights inside each vLLM worker."""

    def load_weights_from_file(self, path: str) -> int:
        """Reload every parameter from a safetensors file in checkpoint (Hugging Face) format.

        ``reload_weights`` re-applies vLLM's own loading and post-processing (layer repacking on CPU),
        which plain ``model.load_weights`` does not survive. Returns the number of tensors read.
        """
        from learner.weight_sync import mapped_safetensors

        quiet_computed_buffers()
        tensors = mapped_safetensors(path)  # views of the file: nothing copied yet
        self.model_runner.reload_weights(weights_iterator=iter(tensors), is_checkpoint_format=True)
        return len(tensors)

    def weights_fingerprint(self) -> float:
        """Sum of |w| over all parameters in fp64: changes when any weight changes (for tests and checks)."""
        import torch

        total = 0.0
        for p in self.model_runner.model.parameters():
            total += float(p.detach().to(torch.float64).abs().sum())
        return total
