"""Reasoning steps of a completion, their token positions and rule-based step rewards.

Process supervision (DeepSeekMath sec. 4.1.3) needs, for every sampled output, where
each reasoning step ends (as a response-token index) and a reward per step. This module
provides the three pieces, with no Ray and no model:

* :func:`split_steps`: character spans of the steps of a text. By default a step ends
  at a blank line (``"\\n\\n"``), which is how chat models usually lay out numbered or
  paragraph-style reasoning; ``separator="\\n"`` makes every line a step.
* :func:`token_char_ends` / :func:`step_token_ends`: map those spans onto the response
  tokens, robustly for byte-level BPE where one character can span several tokens.
* :func:`arithmetic_step_rewards`: a rule-based stand-in for a process reward model.

The tokenizer is whatever object is passed in (a ``transformers`` tokenizer in
practice); this module imports nothing from ``transformers``.
"""
from __future__ import annotations

import bisect
import codecs
import re
from fractions import Fraction
from typing import Any, Dict, List, Optional, Sequence, Tuple

from reward.verifiers import MAX_NUMBER_DIGITS

__all__ = [
    "split_steps",
    "token_char_ends",
    "step_token_ends",
    "arithmetic_step_rewards",
    "equations_in",
]


# -------------------------------------------------------------------- splitting

def split_steps(text: str, separator: str = "\n\n") -> List[Tuple[int, int]]:
    """Character spans ``(start, end)`` (end exclusive) of the reasoning steps of ``text``.

    The default separator, a blank line (``"\\n\\n"``), is the conventional boundary
    between reasoning steps; pass ``separator="\\n"`` to make every line a step (any
    non-empty string works). The text is cut right *after* each occurrence of the
    separator, so the separator belongs to the step before it. A piece that is empty
    or whitespace-only (e.g. the extra newlines of ``"a\\n\\n\\n\\nb"``, or trailing
    whitespace) is merged into the previous step (into the next one when it starts the
    text). A text with no separator is one step; so is a whitespace-only text; an empty
    text has no steps.

    The spans are contiguous and cover the whole text:
    ``split_steps("a\\n\\nb")`` is ``[(0, 3), (3, 4)]``.
    """
    if not separator:
        raise ValueError("separator must be a non-empty string")
    if not text:
        return []
    pieces: List[Tuple[int, int]] = []
    start = 0
    while True:
        idx = text.find(separator, start)
        if idx < 0:
            break
        end = idx + len(separator)
        pieces.append((start, end))
        start = end
    if start < len(text):
        pieces.append((start, len(text)))

    spans: List[Tuple[int, int]] = []
    leading: Optional[int] = None  # start of whitespace-only pieces before the first step
    for s, e in pieces:
        if not text[s:e].strip():
            if spans:
                spans[-1] = (spans[-1][0], e)
            elif leading is None:
                leading = s
            continue
        if leading is not None:
            s, leading = leading, None
        spans.append((s, e))
    if leading is not None:  # the whole text is whitespace
        spans.append((leading, len(text)))
    return spans


# ---------------------------------------------------------- tokens <-> characters

def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable-character table used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) \
        + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


_BYTE_DECODER: Dict[str, int] = {c: b for b, c in _bytes_to_unicode().items()}


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False)


def _byte_level_char_ends(tokenizer: Any, ids: Sequence[int], text: str) -> Optional[List[int]]:
    """O(n) path for byte-level BPE: each token's bytes through an incremental UTF-8
    decoder. Returns None when the result does not reproduce ``text`` exactly (not a
    byte-level tokenizer, decode-time clean-up, ...), so the caller can fall back."""
    try:
        tokens = tokenizer.convert_ids_to_tokens(list(ids))
    except Exception:  # noqa: BLE001 - any failure just means "use the slow path"
        return None
    if tokens is None or len(tokens) != len(ids):
        return None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    ends: List[int] = []
    pieces: List[str] = []
    count = 0
    last = len(ids) - 1
    for k, tok in enumerate(tokens):
        if not isinstance(tok, str):
            return None
        if all(ch in _BYTE_DECODER for ch in tok):
            raw = bytes(_BYTE_DECODER[ch] for ch in tok)
        else:  # an added/special token stored verbatim
            raw = tok.encode("utf-8")
        piece = decoder.decode(raw, final=(k == last))
        pieces.append(piece)
        count += len(piece)
        ends.append(count)
    return ends if "".join(pieces) == text else None


def _prefix_char_ends(tokenizer: Any, ids: Sequence[int], text: str) -> List[int]:
    """Generic O(n^2) path: decode every prefix; the characters it covers are its
    longest common prefix with the full text (an incomplete multi-byte character
    decodes to U+FFFD there, which does not match), made non-decreasing."""
    ends: List[int] = []
    best = 0
    for k in range(len(ids)):
        prefix = _decode(tokenizer, ids[: k + 1])
        if text.startswith(prefix):
            common = len(prefix)
        else:
            limit = min(len(prefix), len(text))
            common = 0
            while common < limit and prefix[common] == text[common]:
                common += 1
        best = max(best, common)
        ends.append(best)
    if ends:
        ends[-1] = len(text)
    return ends


def token_char_ends(tokenizer: Any, token_ids: Sequence[int], text: Optional[str] = None) -> List[int]:
    """For each response token, how many characters of the decoded response it completes.

    ``ends[k]`` is the number of leading characters of
    ``text = tokenizer.decode(token_ids, skip_special_tokens=False)`` that are fully
    decoded once tokens ``0..k`` are included, so ``decode(token_ids[:k+1])`` starts
    with ``text[:ends[k]]``. A token that completes no character (the first bytes of
    a multi-byte UTF-8 character such as an emoji, CJK or accented letter) gets the
    previous count. Non-decreasing; the last value is ``len(text)``.

    Byte-level BPE tokenizers (GPT-2 / Llama-3 / SmolLM / Qwen) take an O(n) path that
    feeds each token's bytes to an incremental UTF-8 decoder and is checked against
    ``text``; any other tokenizer (or a mismatch) falls back to decoding every prefix
    (O(n^2), same result). ``text`` may be passed if already decoded.
    """
    ids = [int(i) for i in token_ids]
    if not ids:
        return []
    if text is None:
        text = _decode(tokenizer, ids)
    fast = _byte_level_char_ends(tokenizer, ids, text)
    return fast if fast is not None else _prefix_char_ends(tokenizer, ids, text)


def step_token_ends(tokenizer: Any, token_ids: Sequence[int], separator: str = "\n\n") -> List[int]:
    """0-based index of the last response token of each reasoning step.

    The steps are :func:`split_steps` of ``tokenizer.decode(token_ids,
    skip_special_tokens=False)``; a step's last token is the first one whose inclusion
    covers the step's last character (see :func:`token_char_ends`). Steps ending in the
    same token are merged, so the result is strictly increasing. Trailing special tokens
    (EOS, padding) belong to the last real step rather than forming a step of their own,
    and the last element is always ``len(token_ids) - 1``. ``[]`` for an empty response.
    """
    ids = [int(i) for i in token_ids]
    n = len(ids)
    if n == 0:
        return []
    text = _decode(tokenizer, ids)
    char_ends = token_char_ends(tokenizer, ids, text=text)
    special = set(getattr(tokenizer, "all_special_ids", None) or ())
    last_body = n - 1
    while last_body >= 0 and ids[last_body] in special:
        last_body -= 1

    body_chars = char_ends[last_body] if last_body >= 0 else 0

    ends: List[int] = []
    for char_start, char_end in split_steps(text, separator):
        if char_start >= body_chars:  # a step made only of the trailing special tokens
            break
        k = min(bisect.bisect_left(char_ends, char_end), n - 1)
        if not ends or k > ends[-1]:
            ends.append(k)
    if ends:
        ends[-1] = n - 1
    else:
        ends = [n - 1]
    return ends


# ----------------------------------------------------------------- step rewards

# Numbers of at most MAX_NUMBER_DIGITS digits, and an equation starts where no number, word or
# decimal point ends: a match is tried once per run of digits, so a 100k-digit response costs
# linear time, and no Fraction is ever built from more digits than int() accepts.
_NUM = (rf"\$?(?:\d{{1,3}}(?:,\d{{3}}){{1,{MAX_NUMBER_DIGITS // 3}}}|\d{{1,{MAX_NUMBER_DIGITS}}})"
        rf"(?:\.\d{{1,{MAX_NUMBER_DIGITS}}})?")
_EQUATION_RE = re.compile(
    rf"(?<![\w.,])(?P<a>-?{_NUM})[ \t]*(?P<op>[-+*/\u00d7\u00f7])[ \t]*(?P<b>-?{_NUM})"
    rf"[ \t]*=[ \t]*(?P<c>-?{_NUM})"
)
_OPERATORS = "+-*/\u00d7\u00f7^"
_CHAIN_AFTER_RE = re.compile(r"[ \t]*[-+*/\u00d7\u00f7^][ \t]*-?\$?\d")


def _number(token: str) -> Fraction:
    return Fraction(token.replace("$", "").replace(",", ""))


def _decimals(token: str) -> int:
    token = token.replace("$", "").replace(",", "")
    return len(token.split(".", 1)[1]) if "." in token else 0


def equations_in(text: str) -> List[Tuple[str, bool]]:
    """Every simple equation ``a op b = c`` in ``text`` with whether it is right.

    ``op`` is one of ``+ - * / × ÷``; numbers are integers or decimals, optionally
    negative, with thousands commas or a ``$``. Part of a longer chain
    (``2 + 3 + 4 = 9``, ``2 + 3 = 5 * 2``) is not a simple equation and is skipped. ``c``
    may be rounded to the decimals it is written with (``10 / 3 = 3.33`` is right); an
    integer ``c`` must be exact; division by zero is wrong. An equation with a number of more than
    ``reward.verifiers.MAX_NUMBER_DIGITS`` digits is not checked (no evidence either way).
    """
    text = text.replace("\u2212", "-")
    found: List[Tuple[str, bool]] = []
    for m in _EQUATION_RE.finditer(text):
        start, end = m.span()
        before = text[:start].rstrip(" \t")
        if start > 0 and (text[start - 1].isalnum() or text[start - 1] in "._,"):
            continue
        if before and (before[-1] in _OPERATORS or before[-1].isdigit()):
            continue
        after = text[end:]
        if after and (after[0].isalnum() or after[0] in "_%"):
            continue  # "c" runs on into a word or unit: "= 5x", "= 50%"
        if _CHAIN_AFTER_RE.match(after):
            continue  # "= 5 * 2 ..." continues the expression
        a, b, c = _number(m["a"]), _number(m["b"]), _number(m["c"])
        op = m["op"]
        if op in "+-":
            value: Optional[Fraction] = a + b if op == "+" else a - b
        elif op in "*\u00d7":
            value = a * b
        else:
            value = a / b if b != 0 else None
        places = _decimals(m["c"])
        if value is None:
            ok = False
        elif places == 0:
            ok = value == c
        else:
            ok = abs(value - c) <= Fraction(1, 2 * 10 ** places)
        found.append((m.group(0), ok))
    return found


def arithmetic_step_rewards(
    step_texts: Sequence[str],
    outcome_correct: bool,
    correct_reward: float = 1.0,
    incorrect_reward: float = 0.0,
) -> List[float]:
    """Rule-based per-step rewards, a stand-in until a process reward model (PRM) exists.

    A PRM scores every reasoning step; without one we check what can be checked by rule:
    the arithmetic. Every simple equation ``a op b = c`` in a step (see
    :func:`equations_in`) is evaluated. An intermediate step scores ``correct_reward``
    if it holds at least one equation and all are right, ``incorrect_reward`` if any is
    wrong, and the midpoint ``(correct_reward + incorrect_reward) / 2`` if it holds
    none (no evidence either way). The last step carries the final answer, so it scores
    the outcome: ``correct_reward`` if ``outcome_correct`` else ``incorrect_reward``.
    """
    rewards: List[float] = []
    middle = (float(correct_reward) + float(incorrect_reward)) / 2.0
    for i, step in enumerate(step_texts):
        if i == len(step_texts) - 1:
            rewards.append(float(correct_reward) if outcome_correct else float(incorrect_reward))
            continue
        checks = equations_in(step)
        if not checks:
            rewards.append(middle)
        elif all(ok for _, ok in checks):
            rewards.append(float(correct_reward))
        else:
            rewards.append(float(incorrect_reward))
    return rewards
