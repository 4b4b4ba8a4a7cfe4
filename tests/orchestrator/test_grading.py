"""Evaluation grades in the protected scorer's process: an answer that breaks or stalls its verifier is
wrong and counted, never the end of ``grpo eval`` or of the periodic evaluation."""
import json
import time
from types import SimpleNamespace

import pytest

from orchestrator.driver import Trainer
from orchestrator.evaluate import grade
from orchestrator.types import Episode, Problem
from reward.rule_scorer import RuleRewardScorer
from tests.reward.faulty_verifiers import FAULTY_VERIFIERS

TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def scorer():
    with RuleRewardScorer(timeout_s=TIMEOUT_S, verifiers=FAULTY_VERIFIERS, memory_mb=400) as s:
        yield s


def test_failing_and_stalling_verifiers_make_wrong_answers_with_their_error(scorer):
    problems = [Problem("a", "1+1?", "2", "arithmetic"), Problem("b", "?", "1", "boom"), Problem("c", "?", "1", "die"),
                Problem("d", "?", "5", "math")]
    greedy = ["2", "x", "x", "\\boxed{9^{9^{9^{9}}}}"]
    start = time.monotonic()
    summary, records = grade(problems, greedy, scorer=scorer)
    assert time.monotonic() - start < TIMEOUT_S + 4.0
    assert summary == {"n": 4, "correct": 1, "accuracy": 0.25, "verifier_errors": 2, "verifier_timeouts": 1}
    assert records == [
        {"uid": "a", "gold": "2", "response": "2", "correct": True},
        {"uid": "b", "gold": "1", "response": "x", "correct": False,
         "verifier_error": "ZeroDivisionError: cannot grade 'x'"},
        {"uid": "c", "gold": "1", "response": "x", "correct": False,
         "verifier_error": "verifier process died (exit code 3)"},
        {"uid": "d", "gold": "5", "response": "\\boxed{9^{9^{9^{9}}}}", "correct": False},  # timed out
    ]


def test_sampled_answers_get_their_keys_and_errors_from_the_scorer(scorer):
    problems = [Problem("a", "1+1?", "2", "arithmetic"), Problem("b", "?", "1", "boom")]
    sampled = [["2", "#### " + "9" * 5000, "2"], ["1", "x", "1"]]
    summary, records = grade(problems, ["2", "3"], sampled, scorer=scorer)
    assert [s["answer"] for s in records[0]["sampled"]] == ["2", "9" * 5000, "2"]  # too long to compare, not to key
    assert [s["correct"] for s in records[0]["sampled"]] == [True, False, True]
    assert records[1]["sampled"] == [
        {"response": o, "answer": None, "correct": False, "verifier_error": f"ZeroDivisionError: cannot grade '{o}'"}
        for o in ("1", "x", "1")]
    assert summary["verifier_errors"] == 4 and "verifier_timeouts" not in summary
    assert summary["pass@1"] == pytest.approx((2 / 3 + 0) / 2)
    assert summary["maj@3"] == pytest.approx(0.5)  # "2" wins and is right; question b has no answer key


def test_grade_without_a_scorer_starts_its_own_and_survives_huge_numbers():
    problems = [Problem("a", "?", "72", "gsm8k"), Problem("b", "?", "5", "arithmetic"),
                Problem("c", "?", "72", "gsm8k")]
    summary, records = grade(problems, ["#### " + "9" * 400, "9" * 5000, "#### 72"])
    assert summary == {"n": 3, "correct": 1, "accuracy": pytest.approx(1 / 3)}
    assert [r["correct"] for r in records] == [False, False, True]


def _episode(group_id: int, text: str, error=None) -> Episode:
    return Episode(group_id=group_id, problem=Problem(f"q{group_id}", "?", "1", "arithmetic"), prompt_token_ids=(1,),
                   response_token_ids=(2,), sampler_logprobs=(-0.1,), response_text=text, finish_reason="stop",
                   policy_version=0, verifier_error=error)


def test_samples_jsonl_keeps_every_sample_whose_verifier_failed(tmp_path):
    trainer = SimpleNamespace(out_dir=str(tmp_path), cfg=SimpleNamespace(rollout=SimpleNamespace(group_size=2)))
    episodes = [_episode(0, "a"), _episode(0, "b", "MemoryError"),
                _episode(1, "c", "verifier process died (exit code 3)"), _episode(1, "d")]
    Trainer._write_samples(trainer, 7, episodes)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert rows == [  # the first sample of each group, as before, and every failed one, with its error
        {"step": 7, "uid": "q0", "gold": "1", "response": "a", "reward": 0.0},
        {"step": 7, "uid": "q0", "gold": "1", "response": "b", "reward": 0.0, "verifier_error": "MemoryError"},
        {"step": 7, "uid": "q1", "gold": "1", "response": "c", "reward": 0.0,
         "verifier_error": "verifier process died (exit code 3)"},
    ]
