"""The contract between actors: what a rollout produces and what the learner consumes.

Only standard-library imports, so every actor (and the driver) can import it cheaply.
Groups are identified by an explicit ``group_id``, never by prompt text: two identical
questions in one batch are two groups.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Problem:
    """One question of a task, with what is needed to prompt and to grade it."""

    uid: str
    """Stable id (dataset name + row), used in error messages and eval output."""
    question: str
    """The question text, before any chat template."""
    gold: str
    """The reference final answer, as a string (number for GSM8K, LaTeX for MATH)."""
    task: str
    """Which verifier grades it: 'gsm8k', 'math' or 'arithmetic'."""


@dataclass(frozen=True)
class Episode:
    """One sampled output o_i for one question q, with everything the learner needs."""

    group_id: int
    """Index of the group (question) inside the step's batch; groups are contiguous."""
    problem: Problem
    prompt_token_ids: tuple[int, ...]
    response_token_ids: tuple[int, ...]
    sampler_logprobs: tuple[float, ...]
    """Log-probability the sampler gave each response token (one per token)."""
    response_text: str
    finish_reason: str
    """'stop' (EOS or stop string) or 'length' (hit max_new_tokens)."""
    policy_version: int
    """Learner step whose weights produced this sample (0 = initial weights)."""
    reward: float = 0.0
    correct: bool = False
    """Rule-verifier verdict, logged even when the reward comes from elsewhere."""
    rule_reward: float = 0.0
    """The rule verifier's reward alone (``reward`` may mix in learned rewards)."""
    learned_reward: float | None = None
    """The outcome reward model's score (probability of a correct answer), when one is used."""
    step_rewards: tuple[float, ...] = ()
    """Process supervision: the reward of each reasoning step (empty under outcome supervision)."""
    step_ends: tuple[int, ...] = ()
    """Process supervision: index (within the response tokens) of each step's last token, increasing."""
    verifier_error: str | None = None
    """Why the rule verifier gave no verdict (its exception, or its process's death): the sample then
    scored as wrong. None when it answered, or ran out of time (counted in reward/timeouts)."""

    def with_reward(self, reward: float, correct: bool, rule_reward: float | None = None,
                    learned_reward: float | None = None) -> "Episode":
        return replace(self, reward=float(reward), correct=bool(correct),
                       rule_reward=float(reward if rule_reward is None else rule_reward),
                       learned_reward=None if learned_reward is None else float(learned_reward))

    def with_steps(self, step_rewards, step_ends) -> "Episode":
        if len(step_rewards) != len(step_ends):
            raise ValueError(f"{self.problem.uid}: {len(step_rewards)} step rewards for {len(step_ends)} steps")
        return replace(self, step_rewards=tuple(float(r) for r in step_rewards), step_ends=tuple(int(e) for e in step_ends))


@dataclass
class Batch:
    """The episodes of one exploration step: ``num_groups`` groups of ``group_size`` each."""

    episodes: list[Episode]
    group_size: int

    @property
    def num_groups(self) -> int:
        return len(self.episodes) // self.group_size

    def validate(self) -> None:
        if self.group_size < 1 or len(self.episodes) % self.group_size:
            raise ValueError(
                f"batch of {len(self.episodes)} episodes is not a whole number of groups of {self.group_size}"
            )
        for i, ep in enumerate(self.episodes):
            if ep.group_id != i // self.group_size:
                raise ValueError(f"episode {i} has group_id {ep.group_id}, expected {i // self.group_size}: groups must be contiguous")
            if len(ep.sampler_logprobs) != len(ep.response_token_ids):
                raise ValueError(f"episode {i} ({ep.problem.uid}): {len(ep.sampler_logprobs)} logprobs for {len(ep.response_token_ids)} tokens")


@dataclass(frozen=True)
class RMSample:
    """One reward-model example: a question, a response cut into reasoning steps, and its labels.

    Outcome models learn ``label`` at the last token; process models learn ``step_labels`` at the
    last token of each step. Steps are text pieces (not token ids), so a reward model with its own
    tokenizer sees the same steps as the policy did.
    """

    problem: Problem
    steps: tuple[str, ...]
    """The response, cut into reasoning steps (one piece for an outcome model); joined they are the response."""
    label: float
    """Outcome label: 1.0 if the rule verifier accepts the final answer, else 0.0."""
    step_labels: tuple[float, ...] = ()
    """Process labels in [0, 1], one per step (empty for outcome-only samples)."""
    policy_step: int = 0
    """RL step whose policy produced the response (0 = the initial policy)."""

    def to_json(self) -> dict:
        return {"problem": asdict(self.problem), "steps": list(self.steps), "label": self.label,
                "step_labels": list(self.step_labels), "policy_step": self.policy_step}

    @classmethod
    def from_json(cls, row: dict) -> "RMSample":
        return cls(problem=Problem(**row["problem"]), steps=tuple(row["steps"]), label=float(row["label"]),
                   step_labels=tuple(float(x) for x in row.get("step_labels", ())),
                   policy_step=int(row.get("policy_step", 0)))


class TrainingError(RuntimeError):
    """A step failed; the message names the step and the component."""
