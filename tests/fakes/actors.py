"""Stand-ins for the heavy actors (vLLM engine, DeepSpeed learner) with the same methods, so the
driver's and the pool's logic can be tested on a real Ray in seconds."""
import json
import os
from dataclasses import replace

from orchestrator.types import Episode


class FakeEngine:
    """Answers like RolloutEngine: one episode per sample, tagged with this engine's policy version."""

    def __init__(self, model, *, name, **kwargs):
        self.name, self.version = name, 0

    def ping(self):
        return self.name

    def generate(self, requests, spec):
        eps = [Episode(group_id=g, problem=p, prompt_token_ids=tuple(ids), response_token_ids=(1, 2),
                       sampler_logprobs=(-0.1, -0.2), response_text=f"{self.name}", finish_reason="stop",
                       policy_version=self.version)
               for g, p, ids in requests for _ in range(spec.n)]
        return eps, {"tokens": 2 * len(eps), "seconds": 0.01, "prompts": len(requests), "engine": self.name}

    def generate_stream(self, requests, spec, chunk_samples, counts=None):
        """Samples in chunks of ``chunk_samples``; after ``die_after_chunks(k)`` the engine dies at chunk k+1."""
        import time

        eps = [e for k, (g, p, ids) in enumerate(requests)
               for e in self.generate([(g, p, ids)], replace(spec, n=counts[k] if counts else spec.n))[0]]
        stats = {"tokens": 2 * len(eps), "seconds": 0.01, "prompts": len(requests), "engine": self.name}
        for k, start in enumerate(range(0, len(eps), chunk_samples)):
            if getattr(self, "chunks_before_death", None) == k:
                time.sleep(0.5)  # let the chunks already yielded reach the caller
                os._exit(1)
            yield eps[start:start + chunk_samples], stats

    def die_after_chunks(self, k):
        self.chunks_before_death = k

    def generate_text_indexed(self, prompts, spec):
        return [(i, [f"{self.name}:{len(ids)}"] * spec.n) for i, ids in prompts]

    def load_weights_blob(self, blob, version):
        self.version = version
        return 0.0

    def load_weights_path(self, path, version):
        self.version = version
        return 0.0

    def node_id(self):
        import ray

        return ray.get_runtime_context().get_node_id()

    def get_policy_version(self):
        return self.version

    def shutdown(self):
        pass

    def die(self):
        os._exit(1)


class FakeLearner:
    """LearnerWorker's interface: counts updates, records the policy versions each batch was sampled with."""

    def __init__(self, cfg, batch_size, *args, **kwargs):
        self.version, self.seen = 0, []
        self.pending = 0  # samples precompute_reference got since the last train_step

    def precompute_reference(self, episodes):
        self.pending += len(episodes)
        return 0.01

    def ping(self):
        return self.version

    def train_step(self, batch, step):
        batch.validate()
        self.seen.append(sorted({e.policy_version for e in batch.episodes}))
        precomputed, self.pending = self.pending / len(batch.episodes), 0
        self.version += 1
        return {"time/learn_s": 0.0, "loss/kl": 0.0, "loss/loss": 0.0, "rollout/logprob_abs_diff": 0.0,
                "learner/reference_precomputed_frac": precomputed}

    def batches_seen(self):
        return self.seen

    def export_weights_blob(self, dtype):
        return b"weights"

    def export_weights_file(self, dtype, version):
        import ray

        return f"/dev/shm/fake-v{version}", ray.get_runtime_context().get_node_id()

    def remove_weights_file(self):
        pass

    def save_checkpoint(self, folder):
        os.makedirs(os.path.join(folder, "learner"), exist_ok=True)
        with open(os.path.join(folder, "learner", "fake.json"), "w") as f:
            json.dump({"version": self.version, "seen": self.seen}, f)
        return self.version

    def load_checkpoint(self, folder):
        with open(os.path.join(folder, "learner", "fake.json")) as f:
            state = json.load(f)
        self.version, self.seen = state["version"], state["seen"]
        return self.version

    def save_pretrained(self, path):
        os.makedirs(path, exist_ok=True)
        return path
