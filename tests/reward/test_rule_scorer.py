"""The protected rule scorer: verdicts, deadlines, failing and dying verifiers, the memory cap (no Ray)."""
import os
import signal
import time

import pytest

from orchestrator.config import RewardConfig
from reward.rule_scorer import RewardError, RuleRewardScorer, Verdict
from tests.reward.faulty_verifiers import FAULTY_VERIFIERS, HOG_CHUNK_MB

CORRECT, INCORRECT = 2.0, -0.5
SAMPLE_TIMEOUT_S = 2.0
SLACK_S = 4.0
"""Time allowed beyond the deadline: killing the stuck process and starting a new one."""
MEMORY_MB = 400
"""Address-space cap of the verifier process in these tests (its RSS after start-up is about 60 MiB)."""


@pytest.fixture(scope="module")
def scorer():
    with RuleRewardScorer(CORRECT, INCORRECT, SAMPLE_TIMEOUT_S, verifiers=FAULTY_VERIFIERS, memory_mb=MEMORY_MB) as s:
        yield s


def _wait_until_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} is still there")


def test_scorer_gives_hand_computed_rewards_and_answers(scorer):
    items = [
        ("arithmetic", "5 + 7 = 12", "12", "a"),
        ("arithmetic", "13", "12", "b"),
        ("gsm8k", "so she sold 72 clips\n#### 72.0", "72", "c"),
        ("math", "\\boxed{\\frac{1}{2}}", "0.5", "d"),
        ("math", "no box", "0.5", "e"),
    ]
    verdicts, stats = scorer.score(items)
    assert verdicts == [Verdict(2.0, True), Verdict(-0.5, False), Verdict(2.0, True), Verdict(2.0, True),
                        Verdict(-0.5, False)]
    assert (stats["timeouts"], stats["verifier_errors"]) == (0, 0)
    verdicts, _ = scorer.score(items, with_answers=True)
    assert [v.answer for v in verdicts] == ["12", "13", "72", "\\frac{1}{2}", None]
    verdicts, stats = scorer.score([])
    assert verdicts == [] and (stats["timeouts"], stats["verifier_errors"]) == (0, 0)


def test_scorer_times_out_a_hanging_sample_and_scores_the_rest(scorer):
    items = [
        ("arithmetic", "12", "12", "before"),
        ("hang", "anything", "1", "stuck"),
        ("arithmetic", "13", "13", "after-1"),
        ("arithmetic", "1", "13", "after-2"),
    ]
    start = time.monotonic()
    verdicts, stats = scorer.score(items)
    elapsed = time.monotonic() - start
    assert verdicts == [Verdict(2.0, True), Verdict(-0.5, False), Verdict(2.0, True), Verdict(-0.5, False)]
    assert (stats["timeouts"], stats["verifier_errors"]) == (1, 0)  # a timeout is no error: no error recorded
    assert SAMPLE_TIMEOUT_S <= elapsed < SAMPLE_TIMEOUT_S + SLACK_S
    # The process was recreated: the next call works and counts no timeout.
    verdicts, stats = scorer.score([("arithmetic", "7", "7", "next")])
    assert (verdicts, stats["timeouts"]) == ([Verdict(2.0, True)], 0)


def test_a_raising_verifier_scores_its_sample_wrong_and_the_process_goes_on(scorer):
    scorer.start()
    pid = scorer.process_id
    items = [("arithmetic", "1", "1", "ok"), ("boom", "x", "1", "bad-uid"), ("exit", "y", "1", "exits"),
             ("arithmetic", "2", "2", "ok-2")]
    verdicts, stats = scorer.score(items)
    assert verdicts == [Verdict(2.0, True), Verdict(-0.5, False, "ZeroDivisionError: cannot grade 'x'"),
                        Verdict(-0.5, False, "SystemExit: giving up on 'y'"), Verdict(2.0, True)]
    assert (stats["timeouts"], stats["verifier_errors"]) == (0, 2)
    assert scorer.process_id == pid  # an exception does not cost the process


def test_a_long_error_is_cut_to_one_short_line(scorer):
    verdicts, _ = scorer.score([("boom", "line one\nline two " + "z" * 10_000, "1", "long")])
    assert verdicts[0].error.startswith("ZeroDivisionError: cannot grade 'line one\\nline two zzz")
    assert len(verdicts[0].error) == 300 and "\n" not in verdicts[0].error


def test_a_dying_verifier_process_is_replaced_and_the_rest_of_the_batch_scored(scorer):
    scorer.start()
    first = scorer.process_id
    items = [("arithmetic", "1", "1", "a"), ("die", "x", "1", "dies"), ("arithmetic", "3", "2", "b"),
             ("killed", "x", "1", "killed"), ("arithmetic", "4", "4", "c")]
    start = time.monotonic()
    verdicts, stats = scorer.score(items)
    assert verdicts == [Verdict(2.0, True), Verdict(-0.5, False, "verifier process died (exit code 3)"),
                        Verdict(-0.5, False), Verdict(-0.5, False, "verifier process died (killed by SIGKILL)"),
                        Verdict(2.0, True)]
    assert (stats["timeouts"], stats["verifier_errors"]) == (0, 2)
    assert time.monotonic() - start < SLACK_S
    assert scorer.process_id not in (None, first)


def test_a_process_killed_while_idle_is_replaced_without_blaming_a_sample(scorer):
    scorer.start()
    pid = scorer.process_id
    os.kill(pid, signal.SIGKILL)
    _wait_until_gone(pid)
    verdicts, stats = scorer.score([("arithmetic", "5", "5", "innocent")])
    assert verdicts == [Verdict(2.0, True)] and stats["verifier_errors"] == 0
    assert scorer.process_id != pid


def test_the_memory_cap_stops_a_verifier_that_allocates_without_end(scorer):
    verdicts, stats = scorer.score([("hog", "x", "1", "hog"), ("arithmetic", "6", "6", "after")])
    assert verdicts == [Verdict(-0.5, False, "MemoryError"), Verdict(2.0, True)]
    assert stats["verifier_errors"] == 1
    # it did fill memory (3 chunks past the ~60 MiB start-up size), up to the cap and no further
    assert 60 + 3 * HOG_CHUNK_MB < stats["peak_rss_mb"] <= MEMORY_MB


TOWER = "\\boxed{9^{9^{9^{9}}}}"
FRACS_1000 = "\\boxed{" + "\\frac{1}{" * 1000 + "2" + "}" * 1000 + "}"
FRACS_20 = "\\boxed{" + "\\frac{1}{" * 20 + "2" + "}" * 20 + "}"  # under the answer-length cap: math-verify hangs
SUM_100K = "+".join(["1"] * 100_000)


@pytest.mark.parametrize("task, completion, stopped_by_scorer", [
    ("gsm8k", "#### " + "9" * 400, False),          # float() would overflow
    ("gsm8k", "9" * 5000, False),
    ("arithmetic", "9" * 5000, False),              # int() refuses more than 4300 digits
    ("math", "\\boxed{" + "9" * 5000 + "}", False),
    ("math", TOWER, True),                          # sympy would evaluate 9^387420489 and beyond
    ("gsm8k", TOWER, False),
    ("arithmetic", TOWER, False),
    ("math", FRACS_1000, False),                    # over the answer-length cap
    ("math", FRACS_20, True),
    ("gsm8k", FRACS_1000, False),
    ("math", "\\boxed{" + SUM_100K + "}", False),
    ("arithmetic", SUM_100K, False),
    ("gsm8k", "#### " + SUM_100K, False),
], ids=["gsm8k-400-digits", "gsm8k-5000-digits", "arithmetic-5000-digits", "math-5000-digits", "math-tower",
        "gsm8k-tower", "arithmetic-tower", "math-1000-fracs", "math-20-fracs", "gsm8k-1000-fracs", "math-100k-sum",
        "arithmetic-100k-sum", "gsm8k-100k-sum"])
def test_pathological_answers_score_wrong_within_the_deadline(scorer, task, completion, stopped_by_scorer):
    start = time.monotonic()
    verdicts, stats = scorer.score([(task, completion, "5", "pathological"), ("arithmetic", "5", "5", "next")])
    assert time.monotonic() - start < SAMPLE_TIMEOUT_S + SLACK_S
    assert verdicts[0].reward == INCORRECT and not verdicts[0].correct
    assert verdicts[1] == Verdict(2.0, True)  # and the next sample is scored as usual
    # the verifier refuses it at once, or the scorer stops it (deadline, memory cap)
    assert stats["timeouts"] + stats["verifier_errors"] == int(stopped_by_scorer)
    assert 0 < stats["peak_rss_mb"] <= MEMORY_MB


def test_an_unknown_task_is_a_configuration_error_naming_the_sample(scorer):
    with pytest.raises(RewardError, match=r"sample 'u9': unknown task 'chess' \(known: arithmetic, boom"):
        scorer.score([("arithmetic", "1", "1", "ok"), ("chess", "e4", "e4", "u9")])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="timeout_s must be > 0, got 0.0"):
        RuleRewardScorer(1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="memory_mb must be > 0, got 0"):
        RuleRewardScorer(memory_mb=0)
    with pytest.raises(RewardError, match=r"could not start the verifier process \(memory cap 5 MiB, "
                                          r"reward.verifier_memory_mb\)"):
        RuleRewardScorer(memory_mb=5).start()


def test_from_config_takes_the_reward_section():
    cfg = RewardConfig(timeout_s=3.0, correct_reward=1.5, incorrect_reward=-1.0, verifier_memory_mb=512)
    scorer = RuleRewardScorer.from_config(cfg)
    assert (scorer.timeout_s, scorer.correct_reward, scorer.incorrect_reward, scorer.memory_mb) == (3.0, 1.5, -1.0, 512)
    assert scorer.process_id is None  # nothing started


def test_rule_step_rewards_come_from_the_protected_process(scorer):
    """Process supervision: each step's rule reward is computed with the verdict, in the verifier process;
    a sample without a verdict (raised, died, ran late) gets the incorrect reward on every step."""
    items = [("arithmetic", "2 + 3 = 5\n\n5", "5", "right"), ("arithmetic", "2 + 2 = 5\n\n4", "4", "slip"),
             ("arithmetic", "7", "8", "plain-wrong"), ("boom", "x", "1", "raises"), ("die", "x", "1", "dies"),
             ("hang", "x", "1", "late"), ("arithmetic", "1 + 1 = 2\n\n9", "2", "after")]
    texts = [["2 + 3 = 5\n\n", "5"], ["2 + 2 = 5\n\n", "4"], ["7"], ["a\n\n", "b"], ["x"], ["h\n\n", "i\n\n", "j"],
             ["1 + 1 = 2\n\n", "9"]]
    verdicts, stats = scorer.score(items, step_texts=texts)
    assert [v.step_rewards for v in verdicts] == [(2.0, 2.0), (-0.5, 2.0), (-0.5,), (-0.5, -0.5), (-0.5,),
                                                  (-0.5, -0.5, -0.5), (2.0, -0.5)]
    assert [v.correct for v in verdicts] == [True, True, False, False, False, False, False]
    assert (stats["timeouts"], stats["verifier_errors"]) == (1, 2)
    assert all(v.step_rewards is None for v in scorer.score(items[:2])[0])  # no texts: no step rewards
    with pytest.raises(ValueError, match="1 step-text lists for 2 items"):
        scorer.score(items[:2], step_texts=texts[:1])
