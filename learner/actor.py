"""Ray actor around ``PolicyTrainer``: process-group setup, batch hand-off and weight export.

The actor holds no GRPO logic; it turns ``Batch`` objects into tensors, calls the trainer, and
exposes the weights in the two forms the sync paths need.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Sequence

import torch

from learner.batching import collate
from learner.weight_sync import NcclWeightSender, SharedWeightFile, free_port, pack_state_dict, sweep_weight_files
from orchestrator.types import Batch

log = logging.getLogger(__name__)


EXTENSION_LOCK_MAX_AGE_S = 600.0
"""A torch-extension build lock older than this is stale (a build here takes about 2 minutes)."""


def use_private_extensions_dir() -> str:
    """Build DeepSpeed's JIT ops (on CPU: the shared-memory comm op) inside this environment.

    torch's default cache (~/.cache/torch_extensions) is shared by every environment, so two venvs
    rebuild over each other; and a build killed midway leaves a lock file that makes every later
    build wait forever. A lock older than EXTENSION_LOCK_MAX_AGE_S is removed, with a warning.
    """
    import glob
    import time

    root = os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
    for lock in glob.glob(os.path.join(root, "*", "*", "lock")) + glob.glob(os.path.join(root, "*", "lock")):
        if time.time() - os.path.getmtime(lock) > EXTENSION_LOCK_MAX_AGE_S:
            log.warning("removing stale torch extension build lock %s", lock)
            os.remove(lock)
    return root


def prebuild_ops() -> None:
    """Compile DeepSpeed's CPU comm op once, at setup time, instead of in the first learner."""
    use_private_extensions_dir()
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()


def _init_process_group(rank: int, world_size: int, master_addr: str, master_port: int, on_gpu: bool) -> None:
    import deepspeed

    use_private_extensions_dir()
    os.environ.update(
        MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK="0",
    )
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False)


def _start_rank(num_gpus: float, num_cpus: float, rank: int = 0, world_size: int = 1,
                master_addr: str = "127.0.0.1", master_port: Optional[int] = None) -> bool:
    """Thread count and process group of one DeepSpeed rank; returns whether it trains on a GPU."""
    on_gpu = torch.cuda.is_available() and num_gpus > 0
    if not on_gpu:
        torch.set_num_threads(max(1, int(num_cpus)))
    _init_process_group(rank, world_size, master_addr, master_port or free_port(), on_gpu)
    return on_gpu


class LearnerWorker:
    """One learner rank. Rank 0 also sends weights to the rollout engines.

    ``run_id`` (``orchestrator.run_lock``; a fresh one when not given) names the shared-memory weight
    file; a start first removes the weight files a killed earlier start of the same run left on this node.
    """

    def __init__(self, cfg, batch_size: int, rank: int = 0, world_size: int = 1,
                 master_addr: str = "127.0.0.1", master_port: Optional[int] = None, run_id: Optional[str] = None):
        from learner.trainer import PolicyTrainer
        from orchestrator.run_lock import new_run_id

        self.run_id = run_id or new_run_id()
        sweep_weight_files(self.run_id)
        _start_rank(cfg.learner.num_gpus, cfg.learner.num_cpus, rank, world_size, master_addr, master_port)
        self.trainer = PolicyTrainer(cfg, batch_size=batch_size, world_size=world_size, rank=rank)
        self.rollout_dtype = None
        self.nccl: Optional[NcclWeightSender] = None
        self.weights_file: Optional[SharedWeightFile] = None

    def ping(self) -> int:
        return self.trainer.version

    def pid(self) -> int:
        return os.getpid()

    def peak_memory_gb(self) -> dict:
        """This rank's peak resident memory (the whole process: Python and torch included) and, on a GPU,
        torch's peak allocation, in GiB: what the memory plan is checked against."""
        import resource

        out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        if self.trainer.on_gpu:
            out["cuda_max_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
        return out

    def _collate(self, batch: Batch):
        return collate(batch.episodes, pad_token_id=self.trainer.pad_id)

    def train_step(self, batch: Batch, step: int) -> dict:
        batch.validate()
        return self.trainer.train_step(self._collate(batch), step, batch.group_size)

    def precompute_reference(self, episodes: list) -> float:
        """Reference logprobs of finished samples of the coming step, computed while the engines generate the
        rest; ``train_step`` uses them instead of its own reference pass. Returns the seconds it took."""
        return self.trainer.precompute_reference(collate(episodes, pad_token_id=self.trainer.pad_id))

    def sequence_logprobs(self, batch: Batch, reference: bool = False) -> list[list[float]]:
        """Per episode, the learner's logprob of each response token (for agreement checks and tests)."""
        tb = self._collate(batch)
        lp = self.trainer.sequence_logprobs(tb, reference=reference)
        out = []
        for i, ep in enumerate(batch.episodes):
            start = len(ep.prompt_token_ids) - 1
            out.append(lp[i, start : start + len(ep.response_token_ids)].tolist())
        return out

    # ------------------------------------------------------------------------- weight sync
    def export_weights_blob(self, dtype: str) -> bytes:
        """File path: the policy as safetensors bytes in the engines' dtype ('float32' or 'bfloat16')."""
        return pack_state_dict(self.trainer.export_state_dict(getattr(torch, dtype)))

    def export_weights_file(self, dtype: str, version: int) -> tuple[str, str]:
        """Same-node path: the policy written once, straight from the parameters, into a safetensors file
        in shared memory; returns (path, this node's id). Every version goes to the same file, overwritten
        in place: the driver only starts the engines' reload after this returns, and the next write only
        after every engine has finished reading."""
        import ray

        module = self.trainer.engine.module
        if self.trainer.rank != 0:  # under ZeRO-3 it takes part in rank 0's gathers
            self.trainer.export_state_dict(getattr(torch, dtype))
            return "", ""
        if self.trainer.zero_stage == 3:  # partitioned: gather full tensors first
            named = list(self.trainer.export_state_dict(getattr(torch, dtype)).items())
        else:
            named = list(module.named_parameters(remove_duplicate=False))
            named += [(n, b) for n, b in module.named_buffers() if not n.endswith("inv_freq")]
        if self.weights_file is None:
            self.weights_file = SharedWeightFile(self.run_id)
        self.weights_file.write(named, getattr(torch, dtype))
        log.debug("weights v%d written to %s", version, self.weights_file.path)
        return self.weights_file.path, ray.get_runtime_context().get_node_id()

    def remove_weights_file(self) -> None:
        if self.weights_file is not None:
            self.weights_file.remove()
            self.weights_file = None

    def weights_nbytes(self, dtype: str) -> int:
        """Bytes a sync moves: every weight the engines receive, in their dtype."""
        size = getattr(torch, dtype).itemsize
        params = self.trainer.engine.module.named_parameters(remove_duplicate=False)
        return sum(getattr(p, "ds_numel", p.numel()) * size for _, p in params)  # ZeRO-3 keeps the full count in ds_numel

    def init_nccl_sync(self, engines: dict, tp: int, dtype: str) -> None:
        """GPU path: one NCCL group per engine (``engines``: name -> handle); callable again for engines
        that join later."""
        if self.nccl is None:
            self.nccl = NcclWeightSender(self.trainer.engine.module, getattr(torch, dtype),
                                         self.trainer.cfg.resources.weight_sync_bucket_mb)
        for name, handle in engines.items():
            self.nccl.add(name, handle, tp)

    def drop_nccl_engines(self, names: Sequence[str]) -> None:
        for name in names:
            if self.nccl is not None:
                self.nccl.remove(name)

    def nccl_send(self, version: int, names: Optional[Sequence[str]] = None) -> float:
        if self.trainer.rank != 0:  # ZeRO-3: the gathers of rank 0's send (one pass per engine), in its order
            if self.trainer.zero_stage == 3:
                from learner.weight_sync import GatheredModuleSource

                if names is None:
                    raise ValueError("nccl_send on a rank > 0 under ZeRO-3 needs the engines' names")
                for _ in names:
                    for _ in GatheredModuleSource(self.trainer.engine.module, self.trainer.dtype):
                        pass
            return 0.0
        if self.nccl is None:
            raise RuntimeError("nccl_send called before init_nccl_sync")
        return self.nccl.send(version, names)

    def save_pretrained(self, out_dir: str) -> str:
        return self.trainer.save_pretrained(out_dir)

    def save_checkpoint(self, out_dir: str) -> int:
        """Resumable learner state under ``out_dir``/learner and the policy in HF format under ``out_dir``/policy."""
        os.makedirs(os.path.join(out_dir, "learner"), exist_ok=True)
        self.trainer.save_state(os.path.join(out_dir, "learner"))
        self.trainer.save_pretrained(os.path.join(out_dir, "policy"))
        return self.trainer.version

    def load_checkpoint(self, in_dir: str) -> int:
        return self.trainer.load_state(os.path.join(in_dir, "learner"))

    def reset_reference(self) -> None:
        self.trainer.reset_reference()

    def reference_max_diff(self) -> float:
        """Largest absolute difference between the reference and the policy weights (0 right after a reset)."""
        return self.trainer.reference_max_diff()


class RewardModelLearner:
    """Ray actor that trains one reward model (ORM or PRM) with DeepSpeed, across Iterative RL rounds."""

    def __init__(self, cfg, kind: str, init_path: str):
        from learner.reward_trainer import RewardModelTrainer

        rm = cfg.reward_model
        on_gpu = _start_rank(rm.num_gpus, rm.num_cpus)
        self.trainer = RewardModelTrainer(rm, init_path, kind, cfg.data.system_prompt, cfg.data.max_prompt_tokens,
                                          on_gpu=on_gpu, seed=cfg.seed, trust_remote_code=cfg.model.trust_remote_code)

    def ping(self) -> int:
        return self.trainer.rounds

    def train(self, samples: list, heldout: list) -> dict:
        """Train one round; held-out accuracy before and after shows what the round bought."""
        before = self.trainer.evaluate(heldout)
        metrics = self.trainer.train(samples)
        after = self.trainer.evaluate(heldout)
        metrics.update({"rm/heldout_accuracy_before": before["accuracy"], "rm/heldout_loss_before": before["loss"],
                        "rm/heldout_accuracy": after["accuracy"], "rm/heldout_auc": after["auc"],
                        "rm/heldout_loss": after["loss"], "rm/heldout_positions": after["positions"],
                        "rm/heldout_positive_frac": after["positive_frac"]})
        return metrics

    def evaluate(self, samples: list) -> dict:
        return self.trainer.evaluate(samples)

    def save(self, out_dir: str) -> str:
        return self.trainer.save(out_dir)

    def save_state(self, out_dir: str) -> None:
        self.trainer.save_state(out_dir)

    def load_state(self, in_dir: str) -> int:
        return self.trainer.load_state(in_dir)
