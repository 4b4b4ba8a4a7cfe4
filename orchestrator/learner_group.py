"""The learner as one DeepSpeed data-parallel group of ``learner.num_ranks`` Ray actors.

Each rank is a ``LearnerWorker`` in its own bundle of one placement group (``learner.placement_strategy``),
rendezvousing at rank 0's node and a free port there. A step's batch is cut into whole groups, the same
number per rank. Calls that are collective (an update, a checkpoint, any gather of ZeRO-3 partitions) go
to every rank; rank 0 alone answers for the weights. When a rank dies or fails, the others may be stuck
in a collective: the whole group is torn down and every later call fails at once with the cause, so the
run ends with its last checkpoint and the resume command.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from orchestrator.types import Batch, Episode, TrainingError

log = logging.getLogger(__name__)

SUMMED_METRICS = ("loss/loss", "loss/pg_loss", "loss/kl")
"""Per-rank parts of a whole-step value: each rank's loss is already normalised by the step's counts."""
MAX_METRICS = ("loss/ratio_max", "loss/grad_norm")
"""The largest over ranks (the gradient norm is the same on every rank: it is taken after the all-reduce)."""


def shard_groups(batch: Batch, ranks: int) -> list[Batch]:
    """``ranks`` batches of whole, contiguous groups, the same number each, group ids renumbered from 0."""
    batch.validate()
    if batch.num_groups % ranks:
        raise ValueError(f"a batch of {batch.num_groups} groups cannot be split evenly over {ranks} learner ranks")
    per_rank = batch.num_groups // ranks * batch.group_size
    shards = []
    for r in range(ranks):
        episodes = batch.episodes[r * per_rank : (r + 1) * per_rank]
        first = episodes[0].group_id
        shards.append(Batch([dataclasses.replace(e, group_id=e.group_id - first) for e in episodes], batch.group_size))
    return shards


def combine_rank_metrics(per_rank: Sequence[dict]) -> dict:
    """One step's metrics from each rank's: summed for the loss parts, the largest for maxima and times
    (the step lasts as long as its slowest rank), the mean for everything else (per-micro-batch means
    and fractions of equal shares)."""
    out = {}
    for key in per_rank[0]:
        values = [float(m[key]) for m in per_rank]
        if key in SUMMED_METRICS:
            out[key] = sum(values)
        elif key in MAX_METRICS or key.startswith("time/"):
            out[key] = max(values)
        else:
            out[key] = sum(values) / len(values)
    return out


def rendezvous_address() -> tuple[str, int]:
    """This node's IP and a free port on it: where rank 0's process group listens."""
    import ray

    from learner.weight_sync import free_port

    return ray.util.get_node_ip_address(), free_port()


@dataclass
class LearnerCall:
    """Calls in flight on some ranks, and how their answers become one."""

    calls: list[tuple[str, object]]
    combine: Callable[[list], object] = field(default=lambda values: values[0])


class LearnerGroup:
    """``learner.num_ranks`` LearnerWorker ranks; each method starts a call and returns a ``LearnerCall``
    (``export_weights_blob``: rank 0's ObjectRef, for the engines to fetch), ``get`` waits for it."""

    def __init__(self, cfg, batch_size: int, run_id: str):
        import ray

        from learner.actor import LearnerWorker
        from orchestrator.placement import actor_options, learner_bundle, place, scheduling

        self.cfg = cfg
        self.size = cfg.learner.num_ranks
        self.zero3 = self.size > 1 and cfg.learner.zero_stage == 3
        self.lost: Optional[str] = None
        self._side: list[tuple[str, object]] = []  # calls of ranks > 0 whose answer nobody waits for
        bundles = [learner_bundle(cfg, rank) for rank in range(self.size)]
        strategy = cfg.learner.placement_strategy if self.size > 1 else "STRICT_PACK"
        self.pg = place("learner", bundles, cfg.resources.placement_timeout_s, strategy)
        address, port = "127.0.0.1", None  # one rank: its own free port
        if self.size > 1:
            task = ray.remote(rendezvous_address).options(num_cpus=0, **scheduling(self.pg, 0))
            address, port = ray.get(task.remote(), timeout=cfg.resources.timeout_s)
        self.names = ["learner"] if self.size == 1 else [f"learner-rank-{r}" for r in range(self.size)]
        self.ranks = [
            ray.remote(LearnerWorker).options(**actor_options(bundles[r]), **scheduling(self.pg, r)).remote(
                cfg, batch_size, rank=r, world_size=self.size, master_addr=address, master_port=port, run_id=run_id)
            for r in range(self.size)
        ]
        if self.size > 1:
            print(f"learner: {self.size} ranks ({strategy}), rendezvous at {address}:{port}", flush=True)

    # ------------------------------------------------------------------------------ plumbing
    def _call(self, method: str, *args, ranks: Optional[Sequence[int]] = None, **kwargs) -> list[tuple[str, object]]:
        if self.lost:
            raise TrainingError(self.lost)
        chosen = range(self.size) if ranks is None else ranks
        return [(self.names[r], getattr(self.ranks[r], method).remote(*args, **kwargs)) for r in chosen]

    def _everyone(self, method: str, *args, combine=None, **kwargs) -> LearnerCall:
        return LearnerCall(self._call(method, *args, **kwargs), combine or (lambda values: values[0]))

    def _rank0(self, method: str, *args) -> LearnerCall:
        return LearnerCall(self._call(method, *args, ranks=[0]))

    def _collective(self, method: str, *args, **kwargs) -> LearnerCall:
        """Rank 0's answer; the other ranks are called too where the call gathers ZeRO-3 partitions."""
        return LearnerCall(self._call(method, *args, ranks=None if self.zero3 else [0], **kwargs))

    def get(self, call: LearnerCall, what: str, timeout_s: Optional[float] = None):
        """Wait for every rank's answer (and earlier unanswered ones); the first rank that dies, fails or
        is late tears the group down (several ranks) and raises TrainingError naming it."""
        import ray

        from orchestrator.remote import ActorDied, _answer

        if self.lost:
            raise TrainingError(f"{what}: {self.lost}")
        timeout_s = self.cfg.resources.timeout_s if timeout_s is None else timeout_s
        side, self._side = self._side, []
        pending = {ref: name for name, ref in side + call.calls}
        values = {}
        deadline = time.monotonic() + timeout_s
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise TrainingError(f"{what}: {', '.join(sorted(set(pending.values())))} did not answer "
                                        f"within {timeout_s:.1f}s")
                for ref in ready:
                    name = pending.pop(ref)
                    try:
                        value = _answer(name, ref, timeout_s, what, TrainingError)
                    except TrainingError as failed:  # the peer of a rank that died fails with a closed connection
                        raise TrainingError(self._dead_rank(pending, what) or str(failed)) from failed
                    if isinstance(value, ActorDied):
                        raise TrainingError(f"{what}: {name} died: {value.error}")
                    values[ref] = value
        except TrainingError as e:
            if self.size > 1:
                self.teardown(f"learner group torn down after: {e}")
            raise
        return call.combine([values[ref] for _, ref in call.calls])

    @staticmethod
    def _dead_rank(pending: dict, what: str, wait_s: float = 5.0) -> Optional[str]:
        """Whether a rank still awaited has died (within ``wait_s``): the cause to report, not its peer's error."""
        import ray

        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=wait_s) if pending else ([], [])
        for ref in ready:
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayActorError as err:
                return f"{what}: {pending[ref]} died: {err}"
            except Exception:  # noqa: BLE001 - another failure: the first one is reported
                pass
        return None

    def teardown(self, why: str) -> None:
        """Kill every rank (one lost rank leaves the others waiting in a collective); later calls fail with ``why``."""
        log.error("%s", why)
        self.lost = why.splitlines()[0]
        self._kill_ranks()

    def shutdown(self) -> None:
        import ray

        from orchestrator.placement import release

        if not self.lost:
            try:
                ray.get(self.ranks[0].remove_weights_file.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - a dead learner has no file to remove (/dev/shm is cleared on reboot)
                pass
        self._kill_ranks()
        release(self.pg)

    def _kill_ranks(self) -> None:
        import ray

        for handle in self.ranks:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

    # ------------------------------------------------------------------------------ calls
    def ping(self) -> LearnerCall:
        return self._everyone("ping")

    def train_step(self, batch: Batch, step: int) -> LearnerCall:
        if self.lost:
            raise TrainingError(self.lost)
        if self.size == 1:
            return self._everyone("train_step", batch, step)
        calls = [(self.names[r], self.ranks[r].train_step.remote(shard, step))
                 for r, shard in enumerate(shard_groups(batch, self.size))]
        return LearnerCall(calls, combine_rank_metrics)

    def precompute_reference(self, episodes: list[Episode]) -> LearnerCall:
        """Every rank scores the whole chunk (the reference is replicated; each keeps the rows it will train):
        as long as one rank's pass."""
        return self._everyone("precompute_reference", episodes, combine=max)

    def sequence_logprobs(self, batch: Batch, reference: bool = False) -> LearnerCall:
        return self._collective("sequence_logprobs", batch, reference=reference)

    def export_weights_file(self, dtype: str, version: int) -> LearnerCall:
        return self._collective("export_weights_file", dtype, version)

    def export_weights_blob(self, dtype: str):
        """Rank 0's ObjectRef of the weights (the engines fetch it themselves); under ZeRO-3 the other ranks
        take part in the gathers and their calls are checked at the next ``get``."""
        (_, ref), *others = self._collective("export_weights_blob", dtype).calls
        self._side.extend(others)
        return ref

    def weights_nbytes(self, dtype: str) -> LearnerCall:
        return self._rank0("weights_nbytes", dtype)

    def init_nccl_sync(self, engines: dict, tp: int, dtype: str) -> LearnerCall:
        return self._rank0("init_nccl_sync", engines, tp, dtype)

    def drop_nccl_engines(self, names: Sequence[str]) -> LearnerCall:
        return self._rank0("drop_nccl_engines", names)

    def nccl_send(self, version: int, names: Sequence[str]) -> LearnerCall:
        return self._collective("nccl_send", version, list(names))

    def save_pretrained(self, out_dir: str) -> LearnerCall:
        return self._everyone("save_pretrained", out_dir)

    def save_checkpoint(self, out_dir: str) -> LearnerCall:
        """Every rank saves its DeepSpeed shard (and RNG) into ``out_dir``; rank 0 the reference and the HF policy."""
        return self._everyone("save_checkpoint", out_dir)

    def load_checkpoint(self, in_dir: str) -> LearnerCall:
        def same(versions: list) -> int:
            if len(set(versions)) != 1:
                raise TrainingError(f"resume from {in_dir}: learner ranks hold different states {versions}")
            return versions[0]

        return self._everyone("load_checkpoint", in_dir, combine=same)

    def reset_reference(self) -> LearnerCall:
        return self._everyone("reset_reference")

    def reference_max_diff(self) -> LearnerCall:
        return self._everyone("reference_max_diff", combine=max)
