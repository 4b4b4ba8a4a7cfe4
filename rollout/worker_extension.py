"""Methods added to every vLLM worker through ``worker_extension_cls`` (vLLM's supported hook).

vLLM mixes this class into its Worker, so ``self`` is the worker and ``self.model_runner`` owns the
model. The engine actor calls these through ``LLM.collective_rpc``. Arguments cross a process
boundary as msgpack, so weights never travel as tensors here: they travel as a file path (CPU path)
or over NCCL (GPU path, see ``rollout/nccl_sync.py``).
"""
from __future__ import annotations


class WeightSyncExtension:
    """Receives new policy weights inside each vLLM worker."""

    def load_weights_from_file(self, path: str) -> int:
        """Reload every parameter from a safetensors file in checkpoint (Hugging Face) format.

        ``reload_weights`` re-applies vLLM's own loading and post-processing (layer repacking on CPU),
        which plain ``model.load_weights`` does not survive. Returns the number of tensors read.
        """
        from learner.weight_sync import mapped_safetensors

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
