"""pass@k and maj@k against hand-computed values."""
import itertools
import math

import pytest

from orchestrator.eval_metrics import ks_up_to, majority_correct, pass_at_k, sampling_summary
from reward.verifiers import answer_key


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 1, 1, 0.25),
    (4, 1, 2, 0.5),            # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (5, 2, 2, 0.7),            # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (8, 0, 4, 0.0),
    (8, 5, 4, 1.0),            # only 3 wrong samples: every 4-subset holds a right one
    (10, 3, 5, 1 - math.comb(7, 5) / math.comb(10, 5)),
])
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_is_the_subset_average():
    # the estimator is the share of k-subsets of the n samples that hold a right one
    flags = [True, False, False, True, False, False]
    for k in range(1, 7):
        subsets = list(itertools.combinations(flags, k))
        assert pass_at_k(6, 2, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_majority_vote():
    assert majority_correct(["7", "5", "7", None], [True, False, True, False]) is True
    assert majority_correct(["5", "7", "5", "7"], [False, True, False, True]) is False  # tie: first seen
    assert majority_correct([None, None], [False, False]) is False
    assert ks_up_to(8) == [1, 2, 4, 8] and ks_up_to(6) == [1, 2, 4, 6] and ks_up_to(1) == [1]


def test_summary_averages_questions():
    summary = sampling_summary([(["1", "2", "1", "1"], [True, False, True, True]),
                                (["3", "4", "4", None], [True, False, False, False])])
    assert summary["pass@1"] == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert summary["pass@4"] == pytest.approx(1.0)
    assert summary["maj@4"] == pytest.approx(0.5)  # first question's majority "1" is right, second's "4" is not


def test_answer_keys_compare_values():
    assert answer_key("gsm8k", "so #### 72.0") == answer_key("gsm8k", "The answer is $72") == "72"
    assert answer_key("arithmetic", "0.750") == answer_key("arithmetic", "It is 0.75") == "3/4"
    assert answer_key("math", "we get \\boxed{\\frac{1}{2}}") == answer_key("math", "\\boxed{ \\frac{1}{2} }")
    assert answer_key("math", "no box") is None and answer_key("gsm8k", "no number") is None


def test_grade_builds_summary_and_records():
    from orchestrator.evaluate import grade
    from orchestrator.types import Problem

    problems = [Problem("a", "1+1?", "2", "arithmetic"), Problem("b", "2+2?", "4", "arithmetic")]
    summary, records = grade(problems, ["2", "5"], [["2", "3", "2"], ["4", "1", "1"]])
    assert summary["accuracy"] == 0.5 and summary["n"] == 2 and summary["samples_per_question"] == 3
    assert summary["pass@1"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert summary["maj@3"] == pytest.approx(0.5)  # "2" wins and is right; "1" wins and is wrong
    assert [r["correct"] for r in records] == [True, False]
    assert [s["answer"] for s in records[1]["sampled"]] == ["4", "1", "1"]
    greedy_only, _ = grade(problems, ["2", "4"])
    assert greedy_only == {"n": 2, "correct": 2, "accuracy": 1.0}
