"""Reward composition: rule verifier, outcome reward model and process reward model, weighted.

Outcome supervision: ``reward = rule_weight * rule + orm_weight * P_orm(correct)``.
Process supervision: step j's reward is ``rule_weight * rule_step_j + prm_weight * P_prm(step j ok)``,
and the outcome part ``orm_weight * P_orm`` is added to the last step (it judges the final answer).
Rule step rewards check each step's arithmetic and grade the last step by the verifier
(``reward.steps.arithmetic_step_rewards``, computed with the verdict in the protected verifier process,
``reward.rule_scorer``), and arrive here ready. The rule verdict is always kept on the episode
(``correct``, ``rule_reward``) so a learned reward that drifts from it is visible in the metrics.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

from orchestrator.types import Episode


@dataclass(frozen=True)
class RewardWeights:
    rule: float = 1.0
    orm: float = 0.0
    prm: float = 0.0

    @property
    def models(self) -> list[str]:
        """The learned reward models these weights use, by kind."""
        return [kind for kind, w in (("orm", self.orm), ("prm", self.prm)) if w > 0]


def compose(ep: Episode, rule_reward: float, correct: bool, orm: Optional[float], prm: Optional[Sequence[float]],
            weights: RewardWeights, steps: Optional[tuple[Sequence[int], Sequence[float]]]) -> Episode:
    """The episode with its composed reward, and step rewards when ``steps`` is given: (each step's last
    token index, each step's rule reward)."""
    outcome = weights.rule * rule_reward + (weights.orm * orm if orm is not None else 0.0)
    ep = ep.with_reward(outcome, correct, rule_reward=rule_reward, learned_reward=orm)
    if steps is None:
        return ep
    ends, rule_steps = steps
    if not ends:
        return ep.with_steps([], [])
    if len(rule_steps) != len(ends):
        raise ValueError(f"{ep.problem.uid}: {len(rule_steps)} rule step rewards for {len(ends)} steps")
    rewards = [weights.rule * r for r in rule_steps]
    if prm is not None:
        if len(prm) != len(ends):
            raise ValueError(f"{ep.problem.uid}: process reward model scored {len(prm)} steps of {len(ends)}")
        rewards = [r + weights.prm * p for r, p in zip(rewards, prm)]
    if orm is not None:
        rewards[-1] += weights.orm * orm
    return ep.with_steps(rewards, ends)


def reward_stats(episodes: Sequence[Episode], prm_scores: Optional[Sequence[Sequence[float]]] = None) -> dict:
    """Learned vs rule rewards of one step: means, and how often the ORM agrees with the verifier."""
    out = {"reward/rule_mean": statistics.fmean(e.rule_reward for e in episodes)} if episodes else {}
    learned = [e for e in episodes if e.learned_reward is not None]
    if learned:
        out["reward/orm_mean"] = statistics.fmean(e.learned_reward for e in learned)
        out["reward/orm_rule_agreement"] = statistics.fmean(
            float((e.learned_reward > 0.5) == e.correct) for e in learned)
    if prm_scores:
        flat = [p for row in prm_scores for p in row]
        if flat:
            out["reward/prm_step_mean"] = statistics.fmean(flat)
            last = [(row[-1], e.correct) for row, e in zip(prm_scores, episodes) if row]
            out["reward/prm_last_step_rule_agreement"] = statistics.fmean(float((p > 0.5) == c) for p, c in last)
    return out
