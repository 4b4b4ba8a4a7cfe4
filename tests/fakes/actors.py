"""Stand-ins for the heavy actors (vLLM engine, reward worker, DeepSpeed learner) with the same methods,
so the driver's and the pools' logic can be tested on a real Ray in seconds."""
import json
import os
import time
from dataclasses import replace

from orchestrator.types import Episode


def sigstop_actor(pid_ref, stopped: list) -> int:
    """SIGSTOP the actor process whose pid ``pid_ref`` (a call's ObjectRef) answers, as a hang; the pid
    goes to ``stopped`` (the tests continue what is still stopped at their end)."""
    import signal

    import ray

    pid = ray.get(pid_ref, timeout=30)
    os.kill(pid, signal.SIGSTOP)
    stopped.append(pid)
    return pid


class FakeEngine:
    """Answers like RolloutEngine: one episode per sample, tagged with this engine's policy version.

    Ways to misbehave, set by a call before the work: ``die_after_chunks(k)``, ``stall_after_chunks(k)``
    (alive and answering heartbeats, but no step any more), ``pace(chunk_s)`` (chunks ``chunk_s`` apart,
    stepping all along: slow but progressing), ``busy(seconds)`` (the next ``generate`` takes that long,
stepping all along)."""

    STEP_S = 0.05
    """How often a paced or busy fake engine takes a step."""

    def __init__(self, model, *, name, **kwargs):
        import rollout.engine  # noqa: F401 - loaded with a real engine: a call's SamplingSpec unpickles at once

        self.name, self.version = name, 0
        self.steps, self.chunk_s, self.generate_s = 0, 0.0, 0.0
        # like vLLM's message queues: a shared-memory file that a clean shutdown removes and a kill leaves
        self.shm_files = [f"fake-engine-shm-{os.getpid()}"]
        with open(os.path.join("/dev/shm", self.shm_files[0]), "wb") as f:
            f.write(b"\0" * 1024)

    def ping(self):
        return self.name

    def pid(self):
        return os.getpid()

    def heartbeat(self):
        return self.steps

    def helper_processes(self):
        return self.node_id(), [], list(self.shm_files)

    def _work(self, seconds):
        """Take steps for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(self.STEP_S)
            self.steps += 1

    def generate(self, requests, spec):
        seconds, self.generate_s = self.generate_s, 0.0
        self._work(seconds)
        eps = self._episodes(requests, spec)
        return eps, {"tokens": 2 * len(eps), "seconds": 0.01, "prompts": len(requests), "engine": self.name}

    def _episodes(self, requests, spec):
        return [Episode(group_id=g, problem=p, prompt_token_ids=tuple(ids), response_token_ids=(1, 2),
                        sampler_logprobs=(-0.1, -0.2), response_text=f"{self.name}", finish_reason="stop",
                        policy_version=self.version)
                for g, p, ids in requests for _ in range(spec.n)]

    def generate_stream(self, requests, spec, chunk_samples, counts=None):
        """Samples in chunks of ``chunk_samples``; after ``die_after_chunks(k)`` the engine dies at chunk
        k+1, after ``stall_after_chunks(k)`` it stops stepping there and never answers."""
        eps = [e for k, request in enumerate(requests)
               for e in self._episodes([request], replace(spec, n=counts[k] if counts else spec.n))]
        stats = {"tokens": 2 * len(eps), "seconds": 0.01, "prompts": len(requests), "engine": self.name}
        for k, start in enumerate(range(0, len(eps), chunk_samples)):
            if getattr(self, "chunks_before_death", None) == k:
                time.sleep(0.5)  # let the chunks already yielded reach the caller
                os._exit(1)
            if getattr(self, "chunks_before_stall", None) == k:
                time.sleep(3600)  # stuck: heartbeats still answered, no step taken
            self._work(self.chunk_s)
            self.steps += 1
            yield eps[start:start + chunk_samples], stats

    def die_after_chunks(self, k):
        self.chunks_before_death = k

    def stall_after_chunks(self, k):
        self.chunks_before_stall = k

    def pace(self, chunk_s):
        self.chunk_s = chunk_s

    def busy(self, seconds):
        self.generate_s = seconds

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
        for name in self.shm_files:
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except FileNotFoundError:
                pass

    def die(self):
        os._exit(1)


class FakeRewardWorker:
    """Answers like RewardWorker without a verifier process: a completion equal to its gold is correct.
    ``busy(seconds)``: each ``score`` takes that long (heartbeats still answered)."""

    def __init__(self, correct_reward, incorrect_reward, timeout_s, verifiers=None, models=None, model_opts=None,
                 memory_mb=1024):
        self.correct_reward, self.incorrect_reward = correct_reward, incorrect_reward
        self.scored, self.score_s = 0, 0.0

    def score(self, items, requests=None, step_texts=None):
        from reward.rule_scorer import Verdict
        from reward.steps import arithmetic_step_rewards

        time.sleep(self.score_s)
        self.scored += len(items)
        verdicts = []
        for k, (_, completion, gold, _) in enumerate(items):
            ok = completion == gold
            steps = None if step_texts is None else tuple(
                arithmetic_step_rewards(step_texts[k], ok, self.correct_reward, self.incorrect_reward))
            verdicts.append(Verdict(self.correct_reward if ok else self.incorrect_reward, ok, None, None, steps))
        return verdicts, {}, {"timeouts": 0, "verifier_errors": 0, "seconds": self.score_s, "peak_rss_mb": 0.0}

    def busy(self, seconds):
        self.score_s = seconds

    def ping(self):
        return os.getpid()

    def heartbeat(self):
        return self.scored

    def load_model(self, kind, path, version):
        return version

    def close(self):
        pass


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
