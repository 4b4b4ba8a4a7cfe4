"""Learned reward models over a run, and Iterative RL (DeepSeekMath sec. 4.2, Algorithm 1's outer loop).

At start-up, for each learned reward in use ('orm': r_phi, 'prm': process model):
    train it (unless a path is given) on the initial policy's samples labelled by the rule verifiers
    (or on ``reward_model.labels_file``), save it, load it into every reward worker.
Every ``iterative.every_steps`` policy steps:
    1. label the samples of those steps (verifier outcome; Math-Shepherd step labels for the PRM),
    2. hold out a slice of questions, mix the rest with ``replay_ratio`` (10%) of the replay buffer,
    3. continue training the same reward model on the mix (its DeepSpeed engine lives on),
    4. save it as iteration k and hot-swap it into the reward workers,
    5. add the new samples to the bounded on-disk replay buffer,
    6. reset the reference model to the current policy.

The driver calls ``start`` once, ``observe`` every step and ``maybe_iterate`` after each weight sync.
Actors do the work (``learner.actor.RewardModelLearner``, ``reward.pool.RewardPool``,
``rollout.group.RolloutGroup``); this module only sequences them and keeps the books.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from typing import Optional, Sequence

from orchestrator.types import Episode, Problem, RMSample
from reward.prm_labels import expansion_plan, prefix_token_ids, step_labels
from reward.process import Steps, segment
from reward.replay import ReplayBuffer, mix_with_replay

TRAINER_STATE = "reward_model_trainers"
"""Checkpoint subfolder of each retrained reward model's trainer state (DeepSpeed: weights, AdamW moments)."""
RECENT_FILE = "rounds_recent.json"
"""Checkpoint file of the samples waiting for the next round (``save_recent``)."""


class IterativeError(RuntimeError):
    """Reward-model training or swapping failed; the message names the model and the iteration."""


def split_heldout(samples: Sequence[RMSample], frac: float, seed: int) -> tuple[list[RMSample], list[RMSample]]:
    """(train, held-out) split by question, so no held-out question is seen in training."""
    uids = sorted({s.problem.uid for s in samples})
    k = int(round(frac * len(uids)))
    if k == 0 or k == len(uids):
        return list(samples), []
    held = set(random.Random(seed).sample(uids, k))
    return [s for s in samples if s.problem.uid not in held], [s for s in samples if s.problem.uid in held]


def load_labelled(path: str) -> list[RMSample]:
    """RMSample rows from a JSONL file; a bad row is reported with its file and line."""
    out = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(RMSample.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError) as e:
                raise IterativeError(f"{path}:{line_no}: not a labelled sample ({type(e).__name__}: {e})") from e
    if not out:
        raise IterativeError(f"{path}: no labelled samples")
    return out


class RewardModelRounds:
    """Owns the reward-model trainers, the replay buffers and the iteration count of one run."""

    def __init__(self, trainer):
        self.t = trainer  # orchestrator.driver.Trainer: cfg, tokenizer, rollout, rewards, learner, prompt_ids
        self.cfg = trainer.cfg
        self.kinds = trainer.rewards.weights.models
        self.root = os.path.join(trainer.out_dir, "reward_models")
        self.buffers = {k: ReplayBuffer(os.path.join(self.root, k, "replay"), self.cfg.iterative.replay_max_samples,
                                        seed=self.cfg.seed) for k in self.kinds}
        self.learners: dict = {}
        self.pgs: dict = {}
        self.iteration = 0
        self.recent: list[tuple[list[Episode], Optional[list[Steps]]]] = []

    def _get(self, name: str, ref, what: str):
        from orchestrator.remote import gather

        return gather([(name, ref)], self.cfg.resources.timeout_s, what, IterativeError)[0]

    # ------------------------------------------------------------------------------- start-up
    def _start_learners(self, init: dict[str, str]) -> None:
        """One reward-model trainer per kind in ``init`` (kind -> starting weights), in its placement group."""
        import ray

        from learner.actor import RewardModelLearner
        from orchestrator.placement import actor_options, place, reward_model_bundle, scheduling

        bundle = reward_model_bundle(self.cfg)
        for kind, path in init.items():
            self.pgs[kind] = place(f"{kind}-trainer", [bundle], self.cfg.resources.placement_timeout_s)
            self.learners[kind] = ray.remote(RewardModelLearner).options(
                **actor_options(bundle), **scheduling(self.pgs[kind])).remote(
                self.cfg, kind, os.path.abspath(path) if os.path.isdir(path) else path)
        for kind, learner in self.learners.items():
            self._get(f"{kind}-trainer", learner.ping.remote(), f"starting the {kind} reward-model trainer")

    def start(self) -> dict:
        """Train (or take) the first reward models and load them into the reward workers."""
        cfg, metrics = self.cfg, {}
        rm = cfg.reward_model
        # a trainer only where a model is to be trained
        self._start_learners({kind: getattr(cfg.reward, f"{kind}_path") or rm.backbone or cfg.model.path
                              for kind in self.kinds
                              if cfg.iterative.every_steps or not getattr(cfg.reward, f"{kind}_path")})
        for kind in self.kinds:
            given = getattr(cfg.reward, f"{kind}_path")
            if given:
                path = given
            else:
                t0 = time.time()
                samples = load_labelled(rm.labels_file) if rm.labels_file else self._bootstrap_samples(kind)
                m, path = self._train_round(kind, samples, version=0)
                metrics.update(m)
                print(f"{kind} reward model trained on {len(samples)} samples in {time.time() - t0:.0f}s: "
                      f"held-out accuracy {m.get(f'{kind}/heldout_accuracy', float('nan')):.3f} -> {path}", flush=True)
            self.t.rewards.swap_model(kind, path, 0, cfg.resources.timeout_s)
        return metrics

    # ----------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        rewards = self.t.rewards
        return {"iteration": self.iteration,
                "models": {k: {"path": rewards.model_paths[k], "version": rewards.model_version[k]} for k in self.kinds}}

    def save(self, folder: str) -> None:
        """Replay buffers, the samples waiting for the next round and, where reward models are retrained,
        their trainers' optimizer state, into a checkpoint folder."""
        for kind, buffer in self.buffers.items():
            shutil.copytree(buffer.directory, os.path.join(folder, "replay", kind))
        if self.cfg.iterative.every_steps:
            for kind, learner in self.learners.items():
                self._get(f"{kind}-trainer", learner.save_state.remote(os.path.join(folder, TRAINER_STATE, kind)),
                          f"checkpoint: {kind} reward-model trainer state")
        save_recent(os.path.join(folder, RECENT_FILE), self.recent)

    def restore(self, state: dict, folder: str) -> None:
        """Continue from a checkpoint: the reward models it served (trainers continue from them), its
        replay buffers and pending samples, its iteration count."""
        cfg, models = self.cfg, state["models"]
        if set(models) != set(self.kinds):
            raise IterativeError(f"checkpoint {folder} has reward models {sorted(models)}, this config uses {sorted(self.kinds)}")
        self._start_learners({k: models[k]["path"] for k in self.kinds if cfg.iterative.every_steps})
        for kind, learner in self.learners.items():  # optimizer moments and round count, where saved
            saved = os.path.join(folder, TRAINER_STATE, kind)
            if os.path.isdir(saved):
                self._get(f"{kind}-trainer", learner.load_state.remote(saved), f"resume: {kind} reward-model trainer state")
            else:
                print(f"resume: {folder} holds no {kind} reward-model trainer state (an older checkpoint); "
                      "its trainer continues from the served weights with a fresh optimizer", flush=True)
        for kind in self.kinds:
            directory = self.buffers[kind].directory
            shutil.rmtree(directory, ignore_errors=True)
            shutil.copytree(os.path.join(folder, "replay", kind), directory)
            self.buffers[kind] = ReplayBuffer(directory, cfg.iterative.replay_max_samples, seed=cfg.seed)
            self.t.rewards.swap_model(kind, models[kind]["path"], models[kind]["version"], cfg.resources.timeout_s)
        self.recent = load_recent(os.path.join(folder, RECENT_FILE))
        self.iteration = int(state["iteration"])

    def _bootstrap_samples(self, kind: str) -> list[RMSample]:
        """Samples of the initial policy on questions drawn apart from the RL data order."""
        problems = random.Random(self.cfg.seed + 7919).sample(
            self.t.problems, min(self.cfg.reward_model.bootstrap_questions, len(self.t.problems)))
        episodes, _ = self.t.rollout.generate(problems, [self.t.prompt_ids[p.uid] for p in problems])
        episodes, _ = self.t.rewards.score(episodes, self.cfg.resources.timeout_s, rule_only=True)
        return self.label(kind, episodes, None)

    # --------------------------------------------------------------------------- labelling
    def label(self, kind: str, episodes: Sequence[Episode], steps: Optional[Sequence[Steps]]) -> list[RMSample]:
        """Verifier-labelled samples for one reward model (Math-Shepherd step labels for a PRM)."""
        if kind == "orm":
            return [RMSample(e.problem, (e.response_text,), float(e.correct), policy_step=e.policy_version)
                    for e in episodes]
        if steps is None:
            steps = segment(episodes, self.t.tokenizer, self.cfg.algorithm.step_separator)
        rm = self.cfg.reward_model
        plan = expansion_plan(episodes, steps, rm.prm_label, rm.prm_max_prefixes)
        counts = self._completion_counts(episodes, steps, plan) if plan else []
        labels = step_labels(episodes, steps, plan, counts, rm.prm_rollouts_per_step, rm.prm_label)
        return [RMSample(e.problem, tuple(texts), float(e.correct), lab, e.policy_version)
                for e, (_, texts), lab in zip(episodes, steps, labels) if texts]

    def _completion_counts(self, episodes, steps, plan) -> list[int]:
        """For each planned prefix, how many of the policy's completions from it the verifier accepts."""
        n = self.cfg.reward_model.prm_rollouts_per_step
        problems = [episodes[i].problem for i, _ in plan]
        prefixes = [prefix_token_ids(episodes[i], steps[i][0], j) for i, j in plan]
        # the engines' context holds prompt + max_new_tokens: a completion gets what the longest prefix left
        room = self.cfg.rollout.max_new_tokens - max(steps[i][0][j] + 1 for i, j in plan)
        completions, _ = self.t.rollout.generate(problems, prefixes, n=n, max_new_tokens=max(1, room))
        # the verifier grades the whole response: the prefix's steps, then the completion
        graded = [_with_text(c, "".join(steps[i][1][: j + 1]) + c.response_text)
                  for (i, j), c in zip((p for p in plan for _ in range(n)), completions)]
        graded, _ = self.t.rewards.score(graded, self.cfg.resources.timeout_s, rule_only=True)
        return [sum(g.correct for g in graded[k * n : (k + 1) * n]) for k in range(len(plan))]

    # ---------------------------------------------------------------------------- training
    def _train_round(self, kind: str, samples: list[RMSample], version: int) -> tuple[dict, str]:
        cfg = self.cfg
        train, held = split_heldout(samples, cfg.reward_model.heldout_frac, cfg.seed + version)
        if not train:
            raise IterativeError(f"{kind} reward model, iteration {version}: no training samples")
        mixed, replayed = mix_with_replay(train, self.buffers[kind], cfg.iterative.replay_ratio) if version else (train, 0)
        m = self._get(f"{kind}-trainer", self.learners[kind].train.remote(mixed, held),
                      f"{kind} reward model, iteration {version}: training")
        path = os.path.abspath(os.path.join(self.root, kind, f"iter_{version}"))
        self._get(f"{kind}-trainer", self.learners[kind].save.remote(path), f"{kind} reward model, iteration {version}: saving")
        self.buffers[kind].add(train)
        out = {f"{kind}/{k.split('/', 1)[1]}": v for k, v in m.items() if k.startswith("rm/")}
        out.update({f"{kind}/new_samples": len(train), f"{kind}/replay_samples": replayed,
                    f"{kind}/replay_fraction": replayed / len(mixed), f"{kind}/heldout_samples": len(held),
                    f"{kind}/buffer_size": len(self.buffers[kind]), f"{kind}/version": version,
                    f"time/{kind}_train_s": m.get("time/rm_train_s", 0.0)})
        return out, path

    # --------------------------------------------------------------------------- iterations
    def observe(self, episodes: list[Episode], steps: Optional[list[Steps]]) -> None:
        """Keep a step's samples for the next reward-model round."""
        if self.cfg.iterative.every_steps:
            self.recent.append((episodes, steps))

    def maybe_iterate(self, step: int) -> dict:
        every = self.cfg.iterative.every_steps
        if not every or step % every:
            return {}
        return self.iterate()

    def iterate(self) -> dict:
        """One Iterative RL round on the samples seen since the last one; returns its metrics."""
        cfg, t0 = self.cfg, time.time()
        self.iteration += 1
        episodes = [e for eps, _ in self.recent for e in eps]
        steps = None if any(s is None for _, s in self.recent) else [x for _, s in self.recent for x in s]
        metrics = {"iterative/iteration": self.iteration}
        for kind in self.kinds:
            m, path = self._train_round(kind, self.label(kind, episodes, steps), version=self.iteration)
            self.t.rewards.swap_model(kind, path, self.iteration, cfg.resources.timeout_s)
            serving = [v[kind]["version"] for v in self.t.rewards.model_versions(cfg.resources.timeout_s)]
            if set(serving) != {self.iteration}:
                raise IterativeError(f"iteration {self.iteration}: reward workers serve {kind} versions {serving}")
            m[f"{kind}/serving_version"] = min(serving)
            metrics.update(m)
        if cfg.iterative.reset_reference:
            self.t.learner.get(self.t.learner.reset_reference(), "resetting the reference model")
            metrics["iterative/reference_max_diff"] = self.t.learner.get(
                self.t.learner.reference_max_diff(), "checking the reference reset")
        self.recent = []
        metrics["time/iteration_s"] = time.time() - t0
        return metrics

    def shutdown(self) -> None:
        import ray

        from orchestrator.placement import release

        for actor in self.learners.values():
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        for pg in self.pgs.values():
            release(pg)
        self.learners, self.pgs = {}, {}


def save_recent(path: str, recent: Sequence[tuple[Sequence[Episode], Optional[Sequence[Steps]]]]) -> None:
    """The samples waiting for the next round, as JSON: per step, its episodes and (process
    supervision) the steps of each. JSON, not pickle: a checkpoint must not be able to run code."""
    rounds = [{"episodes": [dataclasses.asdict(e) for e in episodes],
               "steps": None if steps is None else [[list(ends), list(texts)] for ends, texts in steps]}
              for episodes, steps in recent]
    with open(path, "w") as f:
        json.dump({"rounds": rounds}, f)


def load_recent(path: str) -> list[tuple[list[Episode], Optional[list[Steps]]]]:
    """``save_recent``'s file back; anything else is an ``IterativeError`` naming the file."""
    if not os.path.exists(path):
        legacy = os.path.join(os.path.dirname(path), "rounds_recent.pkl")
        older = f" (it holds {legacy}, a pickle of an older version, which is not loaded: pickle can run code)" \
            if os.path.exists(legacy) else ""
        raise IterativeError(f"{path} is missing{older}")
    tuples = {f.name for f in dataclasses.fields(Episode) if str(f.type).startswith("tuple")}
    try:
        with open(path) as f:
            rounds = json.load(f)["rounds"]
        return [([Episode(**{**{k: tuple(v) if k in tuples else v for k, v in e.items()},
                              "problem": Problem(**e["problem"])}) for e in r["episodes"]],
                 None if r["steps"] is None else [(list(ends), list(texts)) for ends, texts in r["steps"]])
                for r in rounds]
    except (ValueError, KeyError, TypeError) as e:
        raise IterativeError(f"{path}: not the samples of a checkpoint ({type(e).__name__}: {e})") from e


def _with_text(ep: Episode, text: str) -> Episode:
    from dataclasses import replace

    return replace(ep, response_text=text)
