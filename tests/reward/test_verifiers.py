"""Rule verifiers: answer extraction, numeric comparison, and grading of real dataset rows."""
import json
import time
from pathlib import Path

import pytest

from reward.verifiers import (
    VERIFIERS,
    answer_key,
    extract_gsm8k_answer,
    extract_model_answer_number,
    last_boxed,
    numbers_equal,
    verify,
    verify_arithmetic,
    verify_gsm8k,
    verify_math,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _rows(path: Path, n: int) -> list[dict]:
    if not path.exists():
        pytest.skip(f"shared dataset {path} not present")
    with open(path) as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("48 + 24 = 72 clips.\n#### 72", "72"),
        ("#### 1,234", "1234"),
        ("She owes money.\n#### -15", "-15"),
        ("#### 2.5", "2.5"),
        ("#### $18.", "18"),
        ("#### 3 #### 4", "4"),
        ("no marker here 42", None),
        ("#### none", None),
    ],
)
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So 5 + 7 = 12.\n#### 12", "12"),
        ("first 3, then \\boxed{42} and 7 later", "42"),
        ("fraction \\boxed{\\frac{3}{4}}", "3/4"),
        ("boxed is not numeric \\boxed{x+1}, so the last number 9", "9"),
        ("It costs $1,234.50 in total.", "1234.50"),
        ("The temperature fell to -7 degrees.", "-7"),
        ("compute 10-3", "3"),
        ("I do not know.", None),
    ],
)
def test_extract_model_answer_number(text, expected):
    assert extract_model_answer_number(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a \\boxed{1} b \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("nested \\boxed{\\sqrt{x^{2}}}", "\\sqrt{x^{2}}"),
        ("\\fbox{7}", "7"),
        ("\\boxed 5$", "5"),
        ("cut off \\boxed{\\frac{1}{", None),
        ("no box", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_numbers_equal():
    assert numbers_equal("72.0", "72")
    assert numbers_equal("3/4", "0.75")
    assert numbers_equal("1,000", "1000")
    assert numbers_equal("1", "1.0000001")  # within 1e-6 relative
    assert not numbers_equal("1", "1.00001")
    assert not numbers_equal("72", "27")
    assert not numbers_equal("1/0", "1")
    assert not numbers_equal(None, "1")
    assert not numbers_equal("abc", "abc")


def test_verify_gsm8k():
    assert verify_gsm8k("48/2 = 24, 48 + 24 = 72\n#### 72", "72")
    assert verify_gsm8k("The total is 1,200 dollars", "1200")
    assert verify_gsm8k("#### 72", "Natalia ... \n#### 72")  # a full gold solution works too
    assert not verify_gsm8k("#### 71", "72")
    assert not verify_gsm8k("I cannot tell", "72")


def test_verify_arithmetic():
    assert verify_arithmetic("12", "12")
    assert verify_arithmetic("5 + 7 = 12", "12")
    assert verify_arithmetic("#### 12", "12")
    assert verify_arithmetic("The answer is 1,050.", "1050")
    assert not verify_arithmetic("12 is wrong, it is 13", "12")
    assert not verify_arithmetic("", "12")


def test_verify_math_equivalences():
    assert verify_math("so \\boxed{\\frac{3}{4}}", "\\frac34")
    assert verify_math("\\boxed{0.5}", "\\frac{1}{2}")  # math_verify treats 0.5 and 1/2 as equal
    assert verify_math("\\boxed{2\\sqrt5}", "2 \\sqrt{5}")
    assert verify_math("\\boxed{12\\pi}", "12\\pi")
    assert not verify_math("\\boxed{0.7}", "\\frac{3}{4}")
    assert not verify_math("\\boxed{8}", "7")
    assert not verify_math("the answer is 7 but not boxed", "7")


def test_verify_dispatch_and_unknown_task():
    assert set(VERIFIERS) == {"gsm8k", "math", "arithmetic"}
    assert verify("arithmetic", "9", "9")
    assert not verify("gsm8k", "#### 8", "9")
    with pytest.raises(ValueError, match="unknown task 'chess'"):
        verify("chess", "e4", "e4")


def test_gsm8k_rows_verify_against_their_own_gold():
    rows = _rows(SHARED_DATA / "gsm8k" / "train.jsonl", 50)
    assert len(rows) == 50
    assert extract_gsm8k_answer(rows[0]["answer"]) == "72"
    for row in rows:
        gold = extract_gsm8k_answer(row["answer"])
        assert gold is not None, row
        assert verify_gsm8k(row["answer"], gold), row
        assert not verify_gsm8k(f"#### {float(gold) + 1}", gold)


def test_math_rows_verify_their_own_boxed_answer():
    rows = _rows(SHARED_DATA / "math" / "dev.jsonl", 100)
    assert len(rows) == 100
    passed = sum(verify_math("\\boxed{" + row["answer"] + "}", row["answer"]) for row in rows)
    assert passed >= 95
    # The solutions' own last box agrees with the answer field too.
    solved = sum(verify_math(row["solution"], row["answer"]) for row in rows)
    assert solved >= 95


def test_a_number_too_long_to_be_an_answer_is_wrong_without_being_converted():
    # float("9" * 400) is inf (Fraction(inf) raises OverflowError); int() refuses > 4300 digits
    assert not verify_gsm8k("#### " + "9" * 400, "72")
    assert not verify_gsm8k("#### " + "9" * 400, "9" * 400)  # even when the gold says so: no real answer is that long
    assert not verify_arithmetic("9" * 5000, "5")
    assert not verify_arithmetic("the sum is " + "1" * 5000, "1" * 5000)
    hundred = "1" + "0" * 99  # MAX_NUMBER_DIGITS digits: still a number
    assert numbers_equal(hundred, hundred) and not numbers_equal(hundred + "0", hundred + "0")
    assert numbers_equal("1/" + "3" * 99, "1/" + "3" * 99) and not numbers_equal("1/" + "3" * 100, "1/" + "3" * 100)
    assert answer_key("gsm8k", "#### " + "9" * 400) == "9" * 400  # a key, not a crash: votes with its twins
    assert answer_key("gsm8k", "#### 1,000") == "1000"


def test_an_overlong_boxed_answer_is_wrong_without_being_parsed():
    long_sum = "+".join(["1"] * 501)  # 1001 characters, more than MAX_ANSWER_CHARS
    start = time.monotonic()
    assert not verify_math("\\boxed{" + long_sum + "}", "501")
    assert not verify_math("\\boxed{" + "\\frac{1}{" * 1000 + "2" + "}" * 1000 + "}", "5")
    assert time.monotonic() - start < 0.5
    assert verify_math("\\boxed{" + "+".join(["1"] * 20) + "}", "20")  # a short sum is still parsed
