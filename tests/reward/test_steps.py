"""Tests for reward.steps: step splitting, token <-> character mapping, step rewards.

Expected spans and rewards are worked out by hand; the tokenizer tests use the real
SmolLM2 byte-level BPE tokenizer (skipped when the model folder is missing).
"""

import time
from pathlib import Path

import pytest

from reward.steps import arithmetic_step_rewards, equations_in, split_steps, step_token_ends, token_char_ends

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "models" / "SmolLM2-135M-Instruct"
MULTIBYTE = "Le café coûte 3 €.\n\n日本語 2 + 2 = 4\n\nDone 🎉"


# ----------------------------------------------------------------- split_steps

@pytest.mark.parametrize("text, expected", [
    ("a\n\nb", [(0, 3), (3, 4)]),                        # separator goes with the step before
    ("Step 1\n\nStep 2\n\n", [(0, 8), (8, 16)]),         # nothing after the last separator
    ("a\n\n\n\nb", [(0, 5), (5, 6)]),                    # "\n\n" piece (3,5) is blank -> merged
    ("a\n\nb\n\n  ", [(0, 3), (3, 8)]),                  # trailing "  " merged into "b\n\n"
    ("a\n\n\nb", [(0, 3), (3, 5)]),                      # odd newline starts the next step
    ("\n\nabc", [(0, 5)]),                               # leading blank piece joins the first step
    ("no separator", [(0, 12)]),
    ("   ", [(0, 3)]),
    ("", []),
])
def test_split_steps_blank_line(text, expected):
    spans = split_steps(text)
    assert spans == expected
    if text:  # contiguous cover of the whole text
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))


def test_split_steps_single_newline_and_custom_separator():
    # "x = 1\n" (0,6) | "y = 2\n" (6,12) + blank "\n" (12,13) merged | "z" (13,14)
    assert split_steps("x = 1\ny = 2\n\nz", separator="\n") == [(0, 6), (6, 13), (13, 14)]
    # with the default the same text is two steps: "x = 1\ny = 2\n\n" (0,13) | "z"
    assert split_steps("x = 1\ny = 2\n\nz") == [(0, 13), (13, 14)]
    assert split_steps("A. B. C", separator=". ") == [(0, 3), (3, 6), (6, 7)]
    with pytest.raises(ValueError):
        split_steps("abc", separator="")


# --------------------------------------------------------------- tokenizer maps

@pytest.fixture(scope="module")
def tok():
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.skip(f"tokenizer missing at {TOKENIZER_DIR}")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def _decode(tok, ids):
    return tok.decode(list(ids), skip_special_tokens=False)


def _check_char_ends(tok, ids, ends):
    text = _decode(tok, ids)
    assert len(ends) == len(ids) and ends[-1] == len(text)
    assert all(a <= b for a, b in zip(ends, ends[1:]))
    for k, e in enumerate(ends):
        prefix = _decode(tok, ids[: k + 1])
        assert prefix.startswith(text[:e]), (k, prefix, e)
        if e < len(text) and text[e] != "\ufffd":  # ...and not one character more
            # (a U+FFFD in the text itself, from a cut-off character, can match early)
            assert not prefix.startswith(text[: e + 1]), (k, prefix, e)


def test_token_char_ends_multibyte(tok):
    ids = tok.encode(MULTIBYTE, add_special_tokens=False) + [tok.eos_token_id]
    ends = token_char_ends(tok, ids)
    _check_char_ends(tok, ids, ends)
    # Some token completes no character (first bytes of 日, 語, 🎉): count repeats.
    assert any(a == b for a, b in zip(ends, ends[1:]))
    assert token_char_ends(tok, []) == []


def test_token_char_ends_truncated_mid_character(tok):
    ids = tok.encode("Done 🎉", add_special_tokens=False)
    # cut inside the emoji's bytes: the decoded text ends with U+FFFD
    for cut in range(1, len(ids) + 1):
        _check_char_ends(tok, ids[:cut], token_char_ends(tok, ids[:cut]))


class _NotByteLevel:
    """Wraps a tokenizer but hides its token strings, forcing the generic prefix path."""

    def __init__(self, inner):
        self.inner = inner
        self.all_special_ids = inner.all_special_ids

    def decode(self, ids, skip_special_tokens=False):
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids):
        return ["\u2581tok" for _ in ids]  # SentencePiece-like: does not reproduce the text


def test_token_char_ends_generic_fallback_agrees(tok):
    ids = tok.encode(MULTIBYTE, add_special_tokens=False) + [tok.eos_token_id]
    slow = token_char_ends(_NotByteLevel(tok), ids)
    assert slow == token_char_ends(tok, ids)
    _check_char_ends(tok, ids, slow)
    assert step_token_ends(_NotByteLevel(tok), ids) == step_token_ends(tok, ids)


def test_step_token_ends_multibyte(tok):
    ids = tok.encode(MULTIBYTE, add_special_tokens=False) + [tok.eos_token_id]
    text = _decode(tok, ids)
    assert text == MULTIBYTE + tok.eos_token
    ends = step_token_ends(tok, ids)
    assert len(ends) == 3 and ends[-1] == len(ids) - 1
    assert all(a < b for a, b in zip(ends, ends[1:]))
    # decoding up to each step's last token gives exactly the text up to the step's end
    assert _decode(tok, ids[: ends[0] + 1]) == "Le café coûte 3 €.\n\n"
    assert _decode(tok, ids[: ends[1] + 1]) == "Le café coûte 3 €.\n\n日本語 2 + 2 = 4\n\n"
    assert _decode(tok, ids[: ends[2] + 1]) == text  # EOS belongs to the last step
    for (_, char_end), end in zip(split_steps(text), ends):
        assert _decode(tok, ids[: end + 1]) == text[:char_end]
    # no EOS: same step boundaries, last token is the emoji's last byte
    assert step_token_ends(tok, ids[:-1]) == ends[:2] + [len(ids) - 2]


def test_step_token_ends_eos_joins_last_step_and_edge_cases(tok):
    eos = tok.eos_token_id
    ids = tok.encode("First.\n\nSecond.\n\n", add_special_tokens=False) + [eos]
    # text "First.\n\nSecond.\n\n<|im_end|>": the EOS-only piece is not a step of its own
    ends = step_token_ends(tok, ids)
    assert len(ends) == 2 and ends[-1] == len(ids) - 1
    assert _decode(tok, ids[: ends[0] + 1]) == "First.\n\n"
    assert step_token_ends(tok, []) == []
    assert step_token_ends(tok, [eos]) == [0]
    assert step_token_ends(tok, [eos, eos]) == [1]
    one = tok.encode("no separator here", add_special_tokens=False)
    assert step_token_ends(tok, one) == [len(one) - 1]
    lines = tok.encode("a = 1\nb = 2\nc = 3", add_special_tokens=False)
    by_line = step_token_ends(tok, lines, separator="\n")
    assert len(by_line) == 3
    assert _decode(tok, lines[: by_line[0] + 1]) == "a = 1\n"
    assert _decode(tok, lines[: by_line[1] + 1]) == "a = 1\nb = 2\n"


# ------------------------------------------------------------- step rewards

def test_arithmetic_step_rewards_hand_cases():
    steps = [
        "We have 3 + 4 = 7 apples.\n\n",              # 3+4 = 7 right                 -> 1
        "Then 7 * 2 = 14 and 14 - 5 = 9.\n\n",        # 14 right, 9 right              -> 1
        "So 9 / 2 = 4\n\n",                           # 9/2 = 4.5, integer c exact: 4 wrong -> 0
        "Think about it.\n\n",                        # no equation                    -> 0.5
        "#### 9",                                     # last step: the outcome
    ]
    assert arithmetic_step_rewards(steps, outcome_correct=True) == [1.0, 1.0, 0.0, 0.5, 1.0]
    assert arithmetic_step_rewards(steps, outcome_correct=False) == [1.0, 1.0, 0.0, 0.5, 0.0]
    # rewards in [-1, 1]: midpoint (1 + -1)/2 = 0
    assert arithmetic_step_rewards(steps, True, correct_reward=1.0, incorrect_reward=-1.0) == \
        [1.0, 1.0, -1.0, 0.0, 1.0]
    # the last step scores the outcome even when its own arithmetic is right / wrong
    assert arithmetic_step_rewards(["2 + 2 = 5"], outcome_correct=True) == [1.0]
    assert arithmetic_step_rewards(["1 + 1 = 2\n\n", "2 + 2 = 4"], outcome_correct=False) == [1.0, 0.0]
    assert arithmetic_step_rewards([], outcome_correct=True) == []
    # one right and one wrong equation in a step -> incorrect
    assert arithmetic_step_rewards(["2 + 2 = 4, 3 + 3 = 7\n\n", "done"], True) == [0.0, 1.0]


@pytest.mark.parametrize("text, expected", [
    ("1,200 + 300 = 1,500", [True]),        # thousands commas
    ("10 / 3 = 3.33", [True]),              # 3.3333 rounds to 3.33 (|diff| 0.0033 <= 0.005)
    ("10 / 3 = 3.3", [True]),               # |3.3333 - 3.3| = 0.033 <= 0.05
    ("10 / 3 = 3.4", [False]),              # |3.3333 - 3.4| = 0.067 > 0.05
    ("10 / 4 = 2", [False]),                # 2.5 != 2 (integer c must be exact)
    ("2.5 × 4 = 10", [True]),               # unicode times
    ("$12 * 3 = $36", [True]),              # dollars
    ("5 - 8 = -3", [True]),                 # negative result
    ("-5 + 3 = -2 and 6÷3=2", [True, True]),
    ("5 \u2212 3 = 2", [True]),             # unicode minus
    ("7 / 0 = 0", [False]),                 # division by zero is wrong
    ("2 + 3 + 4 = 9", []),                  # chain: not a simple equation
    ("2 + 3 = 5 * 2 = 10", []),             # chain continues after c
    ("x = 4 + 5 = 9", [("4 + 5 = 9", True)]),
    ("50 * 2 = 100%", []),                  # c is not a plain number
    ("Step 3: no maths here", []),
])
def test_equations_in(text, expected):
    found = equations_in(text)
    if expected and isinstance(expected[0], tuple):
        assert found == expected
    else:
        assert [ok for _, ok in found] == expected


def test_equations_with_overlong_numbers_are_not_checked_and_cost_linear_time():
    # 5000 digits: Fraction() would raise (int() refuses > 4300); numbers of > MAX_NUMBER_DIGITS are skipped
    assert equations_in("9" * 5000 + " + 1 = 2 and 1 + 1 = 2") == [("1 + 1 = 2", True)]
    assert equations_in("1 + " + "9" * 101 + " = 2") == []
    assert equations_in("1 + 1 = " + "2" * 101) == []
    hundred = "1" + "0" * 99
    assert equations_in(f"{hundred} + 1 = {hundred[:-1]}1") == [(f"{hundred} + 1 = {hundred[:-1]}1", True)]
    start = time.monotonic()
    for text in ("9" * 100_000, "+".join(["1"] * 100_000), "1" + ",000" * 30_000, "1.1" * 30_000):
        assert equations_in(text) == []
    assert time.monotonic() - start < 2.0  # 40k digits took 100 s when a match was tried at every digit
    huge_step = "9" * 5000 + " * 2 = 1\n\n"
    assert arithmetic_step_rewards([huge_step, "#### 5"], outcome_correct=False) == [0.5, 0.0]
