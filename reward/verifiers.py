"""Rule-based answer verifiers: plain functions, no Ray, no timeouts of their own.

Each verifier takes a model completion and a gold answer string and returns whether the
completion's final answer is correct:

* ``gsm8k``: the number after the last ``####`` (else the last ``\\boxed{}`` number, else
  the last number in the text), compared numerically with the gold number.
* ``arithmetic``: the number after ``####``, else the last number in the text, compared
  numerically with the gold integer.
* ``math``: the content of the last ``\\boxed{}`` / ``\\fbox{}``, compared with the gold
  LaTeX answer by ``math_verify`` (symbolic equivalence), with an exact normalised string
  match as a fallback.

A number of more than ``MAX_NUMBER_DIGITS`` digits, or a boxed MATH answer of more than
``MAX_ANSWER_CHARS`` characters, is no answer to a math problem: it is simply wrong, decided
before any conversion or parsing (so ``"#### " + "9" * 400`` cannot make ``float`` overflow).

``math_verify`` enforces its own timeouts with ``signal.alarm``, which only works in the
main thread; we switch them off (``parsing_timeout=None`` / ``timeout_seconds=None``)
because every verifier call runs in a memory-capped process that ``reward.rule_scorer``
kills at its deadline (``9^{9^{9^{9}}}`` is only stopped there).
"""
from __future__ import annotations

import logging
import math
import re
from fractions import Fraction
from typing import Callable, Optional

# A number as people write it: optional sign, digits with optional thousands commas,
# optional decimals ("-1,234.5", "72", "0.25", ".5"). A sign right after a word, ')' or
# a digit is an operator, not a sign: "5-3" holds the numbers 5 and 3.
_NUMBER_RE = re.compile(
    r"(?:(?<![\w)\]}])[-+])?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
)
MAX_NUMBER_DIGITS = 100
"""A number with more digits than this compares unequal to everything (and is never converted)."""
MAX_ANSWER_CHARS = 1000
"""A boxed MATH answer longer than this is wrong without being parsed."""
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_LATEX_FRAC_RE = re.compile(r"^([-+]?)\\[dt]?frac(?:\{([^{}]+)\}|(\d))(?:\{([^{}]+)\}|(\d))$")
_LATEX_NOISE_RE = re.compile(r"\\[,;:! $%]|\\left|\\right|\\displaystyle|[$%]|\s")
_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def _clean_number(token: str) -> str:
    """'1,234.' -> '1234', '+$5' -> '5', '\u22123' -> '-3'."""
    token = token.replace("\u2212", "-").replace(",", "").replace("$", "").strip()
    token = token.rstrip(".")
    return token[1:] if token.startswith("+") else token


def _first_number(text: str) -> Optional[str]:
    match = _NUMBER_RE.search(text.replace("\u2212", "-").replace("$", ""))
    return _clean_number(match.group(0)) if match else None


def _last_number(text: str) -> Optional[str]:
    matches = _NUMBER_RE.findall(text.replace("\u2212", "-").replace("$", ""))
    return _clean_number(matches[-1]) if matches else None


def _split_fraction(text: str) -> list[str]:
    """'\\frac{3}{4}' / '\\frac34' / '3/4' -> ['3', '4']; anything else -> [text]."""
    frac = _LATEX_FRAC_RE.match(text)
    if frac:
        sign, num_braced, num_digit, den_braced, den_digit = frac.groups()
        return [sign + (num_braced or num_digit), den_braced or den_digit]
    return text.split("/")


def _to_fraction(value: str) -> Optional[Fraction]:
    """Parse '72', '-3.5', '1,234', '3/4', '\\frac{3}{4}' into an exact Fraction, else None (also for a
    number of more than ``MAX_NUMBER_DIGITS`` digits)."""
    text = _LATEX_NOISE_RE.sub("", value.replace("\u2212", "-")).rstrip(".")
    if sum(char.isdigit() for char in text) > MAX_NUMBER_DIGITS:
        return None
    parts = _split_fraction(text)
    if len(parts) > 2 or not all(_NUMBER_RE.fullmatch(part) for part in parts):
        return None
    numbers = [Fraction(_clean_number(part)) for part in parts]
    if len(numbers) == 1:
        return numbers[0]
    return numbers[0] / numbers[1] if numbers[1] != 0 else None


def extract_gsm8k_answer(text: str) -> Optional[str]:
    """The number after the last '####' (commas, '$' and a trailing '.' removed), or None."""
    if "####" not in text:
        return None
    return _first_number(text.rsplit("####", 1)[1])


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (balanced braces), or None.

    Also accepts the brace-less form ``\\boxed 5``. An unclosed last box (a completion
    cut off mid-answer) gives None rather than an earlier, intermediate box.
    """
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    command = next(cmd for cmd in _BOX_COMMANDS if text.startswith(cmd, start))
    rest = text[start + len(command):]
    if rest.startswith(" "):
        token = rest.strip().split("$")[0].split()
        return token[0] if token else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return rest[1:i].strip()
    return None


def _boxed_number(text: str) -> Optional[str]:
    """The last boxed answer as a number string ('3/4' for a fraction), if it is numeric."""
    boxed = last_boxed(text)
    if boxed is None:
        return None
    plain = _LATEX_NOISE_RE.sub("", _TEXT_WRAPPER_RE.sub("", boxed)).rstrip(".")
    value = _to_fraction(plain)
    if value is None:
        return None
    if _NUMBER_RE.fullmatch(plain):
        return _clean_number(plain)
    return f"{value.numerator}/{value.denominator}"


def extract_model_answer_number(text: str) -> Optional[str]:
    """A completion's final number: '#### n', else a numeric last box, else the last number."""
    if "####" in text:
        after = extract_gsm8k_answer(text)
        if after is not None:
            return after
    boxed = _boxed_number(text)
    if boxed is not None:
        return boxed
    return _last_number(text)


def numbers_equal(a: Optional[str], b: Optional[str]) -> bool:
    """Numeric equality within a relative tolerance of 1e-6 ('72.0' == '72', '3/4' == '0.75')."""
    if a is None or b is None:
        return False
    x, y = _to_fraction(str(a)), _to_fraction(str(b))
    if x is None or y is None:
        return False
    if x == y:
        return True
    return math.isclose(float(x), float(y), rel_tol=1e-6, abs_tol=1e-12)


def _gold_number(gold: str) -> Optional[str]:
    """Gold answers are stored already extracted ('72'); accept a full '... #### 72' too."""
    return extract_gsm8k_answer(gold) if "####" in gold else _clean_number(gold)


def verify_gsm8k(completion: str, gold: str) -> bool:
    """GSM8K: the completion's final number equals the gold number."""
    return numbers_equal(extract_model_answer_number(completion), _gold_number(gold))


def verify_arithmetic(completion: str, gold: str) -> bool:
    """Synthetic sums: the number after '####', else the last number, equals the gold integer."""
    answer = extract_gsm8k_answer(completion) if "####" in completion else None
    if answer is None:
        answer = _last_number(completion)
    return numbers_equal(answer, _gold_number(gold))


def _normalize_latex(text: str) -> str:
    """Loose string form for the exact-match fallback: no spacing commands, '$', '\\left'."""
    text = _TEXT_WRAPPER_RE.sub(r"\1", text)
    text = _LATEX_NOISE_RE.sub("", text)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return text.rstrip(".")


class _DropTimeoutDisabledWarning(logging.Filter):
    """math_verify warns once per process that its timeouts are off; here that is intended."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


def _import_math_verify():
    """Import math_verify lazily (sympy is slow to import) and mute the warning above."""
    import math_verify

    for name in ("math_verify.parser", "math_verify.grader"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTimeoutDisabledWarning) for f in logger.filters):
            logger.addFilter(_DropTimeoutDisabledWarning())
    return math_verify


def verify_math(completion: str, gold: str) -> bool:
    """MATH: the completion's last boxed answer is equivalent to the gold LaTeX answer."""
    predicted = last_boxed(completion)
    if predicted is None or len(predicted) > MAX_ANSWER_CHARS:
        return False
    gold_answer = last_boxed(gold) if any(cmd in gold for cmd in _BOX_COMMANDS) else gold
    if gold_answer is None:
        return False
    if _normalize_latex(predicted) and _normalize_latex(predicted) == _normalize_latex(gold_answer):
        return True
    math_verify = _import_math_verify()
    gold_parsed = math_verify.parse("\\boxed{" + gold_answer + "}", parsing_timeout=None)
    pred_parsed = math_verify.parse("\\boxed{" + predicted + "}", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None))


def warm_up() -> bool:
    """Import the heavy parser (sympy, latex2sympy) so the first real sample does not pay it."""
    return verify_math("\\boxed{\\frac{1}{2}}", "0.5")


Verifier = Callable[[str, str], bool]

VERIFIERS: dict[str, Verifier] = {
    "gsm8k": verify_gsm8k,
    "math": verify_math,
    "arithmetic": verify_arithmetic,
}


def answer_key(task: str, completion: str) -> Optional[str]:
    """A canonical form of a completion's final answer, for majority voting; None if it has none.

    Numbers compare by value ('72.0', '72' and '$72' share a key); MATH answers by their loosely
    normalised LaTeX (equivalent forms written differently vote separately).
    """
    if task == "math":
        boxed = last_boxed(completion)
        return _normalize_latex(boxed) or None if boxed is not None else None
    number = extract_model_answer_number(completion)
    value = _to_fraction(number) if number is not None else None
    return str(value) if value is not None else number


def verify(task: str, completion: str, gold: str) -> bool:
    """Dispatch to the verifier of ``task``; unknown tasks raise ValueError naming them."""
    try:
        verifier = VERIFIERS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}: no verifier (known: {', '.join(sorted(VERIFIERS))})") from None
    return verifier(completion, gold)
