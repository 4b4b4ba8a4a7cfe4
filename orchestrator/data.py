"""Datasets and prompts: load questions, build chat prompts, and sample batches of questions.

* ``load_gsm8k`` / ``load_math`` read a local ``.jsonl`` file or a ``datasets`` hub name
  (``name``, ``name:config`` or ``name:config:split``). A bad row raises ``DataError``
  naming the file and its 1-based line number.
* ``make_arithmetic`` generates the synthetic "What is a + b?" task, seeded and with
  train and held-out questions that never share an ``(a, b)`` pair.
* ``build_messages`` / ``encode_prompts`` turn problems into chat-template token ids.
* ``QuestionSampler`` walks the training questions epoch by epoch, resumable exactly.
"""
from __future__ import annotations

import json
import os
import random
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from orchestrator.config import DataConfig
from orchestrator.types import Problem
from reward.verifiers import extract_gsm8k_answer, last_boxed

INSTRUCTIONS = {
    "gsm8k": "\nLet's think step by step and output the final answer after \"####\".",
    "math": "\nPlease reason step by step, and put your final answer within \\boxed{}.",
    "arithmetic": "",
}
"""Chain-of-thought instruction appended to each task's question (arithmetic asks for the number itself)."""

_HUB_DEFAULT_CONFIGS = {"openai/gsm8k": "main", "gsm8k": "main"}


class DataError(ValueError):
    """A dataset row or prompt is unusable; the message names the file and line, or the problem uid."""


# -- loading ------------------------------------------------------------------------------

RowParser = Callable[[dict], tuple[str, str]]
"""Turns one raw row into (question, gold); raises DataError (without location) if it cannot."""


def _field(row: dict, name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"missing or empty field {name!r}")
    return value


def gsm8k_row(row: dict) -> tuple[str, str]:
    question, answer = _field(row, "question"), _field(row, "answer")
    gold = extract_gsm8k_answer(answer)
    if gold is None:
        raise DataError("field 'answer' has no number after '####'")
    return question, gold


def math_row(row: dict) -> tuple[str, str]:
    question = _field(row, "problem")
    answer = row.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if isinstance(answer, str) and answer.strip():
        return question, answer.strip()
    gold = last_boxed(_field(row, "solution"))
    if not gold:
        raise DataError("no 'answer' field and no \\boxed{} answer in 'solution'")
    return question, gold


def _is_local(source: str) -> bool:
    return source.endswith((".jsonl", ".json")) or source.startswith((".", "/", "~")) or os.path.exists(source)


def iter_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """(1-based line number, row) for each non-blank line; DataError names the file and line of a
    line that is not UTF-8, not JSON or not a JSON object, and a missing file (with what to run)."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file{missing_data_hint(path)}")
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{line_no}: not UTF-8 ({err.reason} at byte {err.start})") from None
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line_no}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            yield line_no, row


def missing_data_hint(path: str) -> str:
    """What to run when a file of ``grpo prepare-data``'s layout (data/gsm8k, data/math) is missing."""
    norm = os.path.normpath(path)
    parts = norm.split(os.sep)
    if len(parts) < 3 or parts[-2] not in ("gsm8k", "math") or not parts[-1].endswith(".jsonl"):
        return ""
    root = os.path.dirname(os.path.dirname(norm)) or "."
    command = "grpo prepare-data" + ("" if root == "data" else f" --out {root}")
    return f" (run `{command}` to download GSM8K and MATH, or `{command} --from DIR` to copy a local mirror)"


def _load_jsonl(path: str, task: str, parse_row: RowParser) -> list[Problem]:
    base = os.path.basename(path)
    problems = []
    for line_no, row in iter_jsonl(path):
        try:
            question, gold = parse_row(row)
        except DataError as err:
            raise DataError(f"{os.path.expanduser(path)}:{line_no}: bad {task} row: {err}") from None
        problems.append(Problem(uid=f"{base}:{line_no}", question=question, gold=gold, task=task))
    if not problems:
        raise DataError(f"{path}: no {task} rows")
    return problems


def _parse_hub_source(source: str, default_split: str) -> tuple[str, Optional[str], str]:
    """'name[:config[:split]]' -> (name, config, split)."""
    parts = source.split(":")
    if len(parts) > 3 or not parts[0]:
        raise DataError(f"hub dataset {source!r} must look like name, name:config or name:config:split")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else _HUB_DEFAULT_CONFIGS.get(name)
    split = parts[2] if len(parts) > 2 and parts[2] else default_split
    return name, config, split


def _load_hub(source: str, task: str, parse_row: RowParser, default_split: str) -> list[Problem]:
    name, config, split = _parse_hub_source(source, default_split)
    try:
        import datasets
    except ImportError as err:
        raise DataError(f"hub dataset {source!r} needs the 'datasets' package") from err
    try:
        rows: Iterable[dict] = datasets.load_dataset(name, config, split=split)
    except Exception as err:
        raise DataError(f"could not load hub dataset {name!r} (config {config!r}, split {split!r}): {err}") from err
    problems = []
    for row_no, row in enumerate(rows, start=1):
        try:
            question, gold = parse_row(dict(row))
        except DataError as err:
            raise DataError(f"{name}:{split} row {row_no}: bad {task} row: {err}") from None
        problems.append(Problem(uid=f"{name}:{split}:{row_no}", question=question, gold=gold, task=task))
    if not problems:
        raise DataError(f"hub dataset {name!r} split {split!r} has no rows")
    return problems


def _load(source: str, task: str, parse_row: RowParser, default_split: str) -> list[Problem]:
    if _is_local(source):
        return _load_jsonl(source, task, parse_row)
    return _load_hub(source, task, parse_row, default_split)


def load_gsm8k(source: str, default_split: str = "train") -> list[Problem]:
    """GSM8K rows {question, answer: '... #### n'} -> Problems with gold 'n'."""
    return _load(source, "gsm8k", gsm8k_row, default_split)


def load_math(source: str, default_split: str = "train") -> list[Problem]:
    """MATH rows {problem, solution[, answer]} -> Problems with the LaTeX answer as gold."""
    return _load(source, "math", math_row, default_split)


# -- synthetic arithmetic -----------------------------------------------------------------


def _fill(pairs: list[int], size: int, rng: random.Random) -> list[int]:
    """`size` pair indices from `pairs`: each pair at most once when enough, else every
    pair once and the rest drawn with replacement; shuffled."""
    if size <= len(pairs):
        return rng.sample(pairs, size)
    chosen = list(pairs) + rng.choices(pairs, k=size - len(pairs))
    rng.shuffle(chosen)
    return chosen


def _arithmetic_problems(indices: list[int], digits: int, low: int, width: int, split: str) -> list[Problem]:
    """Pair index k -> 'What is a + b?' with a = low + k // width, b = low + k % width."""
    problems = []
    for i, index in enumerate(indices):
        a, b = low + index // width, low + index % width
        question = f"What is {a} + {b}? Give only the final number."
        uid = f"arithmetic-{digits}d:{split}:{i}"
        problems.append(Problem(uid=uid, question=question, gold=str(a + b), task="arithmetic"))
    return problems


def make_arithmetic(digits: int, train_size: int, eval_size: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Synthetic 'What is a + b?' questions, operands of exactly `digits` digits (1 digit: 0-9).

    Pairs (a, b) are numbered 0..N-1. When train_size + eval_size <= N, all questions use
    distinct pairs. Otherwise (1-digit: N = 100) the pairs are split deterministically,
    at most 20% of them (and no more than eval_size) held out, and each split draws its
    questions from its own pairs: every pair once, the remainder with replacement. Either
    way no pair is in both splits. Same arguments, same questions.
    """
    if not 1 <= digits <= 9:
        raise ValueError(f"digits must be in 1..9, got {digits}")
    if train_size < 1 or eval_size < 0:
        raise ValueError(f"need train_size >= 1 and eval_size >= 0, got {train_size}, {eval_size}")
    low = 0 if digits == 1 else 10 ** (digits - 1)
    width = 10**digits - low
    space = width * width
    rng = random.Random(f"arithmetic:{digits}:{seed}")
    if train_size + eval_size <= space:
        chosen = rng.sample(range(space), train_size + eval_size)
        held_idx, train_idx = chosen[:eval_size], chosen[eval_size:]
    else:
        order = rng.sample(range(space), space)
        held_count = min(eval_size, space // 5)
        held_idx = _fill(order[:held_count], eval_size, rng) if eval_size else []
        train_idx = _fill(order[held_count:], train_size, rng)
    return (
        _arithmetic_problems(train_idx, digits, low, width, "train"),
        _arithmetic_problems(held_idx, digits, low, width, "eval"),
    )


def load_problems(data_cfg: DataConfig, split: str, seed: int) -> list[Problem]:
    """The train or eval questions of the configured task ([] for eval without an eval_file)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if data_cfg.task == "arithmetic":
        train, held_out = make_arithmetic(
            data_cfg.arithmetic_digits, data_cfg.arithmetic_train_size, data_cfg.arithmetic_eval_size, seed
        )
        return train if split == "train" else held_out
    loaders = {"gsm8k": load_gsm8k, "math": load_math}
    if data_cfg.task not in loaders:
        raise DataError(f"config field data.task={data_cfg.task!r}: no loader (known: arithmetic, gsm8k, math)")
    source = data_cfg.train_file if split == "train" else data_cfg.eval_file
    if not source:
        if split == "eval":
            return []
        raise DataError(f"config field data.train_file is required for task {data_cfg.task!r}")
    return loaders[data_cfg.task](source, default_split="train" if split == "train" else "test")


# -- prompts ------------------------------------------------------------------------------


def build_messages(problem: Problem, system_prompt: Optional[str] = None) -> list[dict]:
    """Chat messages for one problem: optional system message, then the instructed question."""
    if problem.task not in INSTRUCTIONS:
        raise DataError(f"problem {problem.uid}: unknown task {problem.task!r}")
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": problem.question + INSTRUCTIONS[problem.task]})
    return messages


def _as_token_list(encoded: Any) -> list[int]:
    """apply_chat_template may give a list, a batch of one list, or a dict/BatchEncoding."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    encoded = list(encoded)
    if encoded and isinstance(encoded[0], (list, tuple)):
        if len(encoded) != 1:
            raise DataError(f"expected one tokenized prompt, got a batch of {len(encoded)}")
        encoded = list(encoded[0])
    return [int(t) for t in encoded]


def _plain_prompt(messages: list[dict]) -> str:
    """Prompt text for a tokenizer without a chat template."""
    system = "".join(m["content"] + "\n\n" for m in messages if m["role"] == "system")
    user = next(m["content"] for m in messages if m["role"] == "user")
    return f"{system}Question: {user}\nAnswer:"


def encode_prompts(
    tokenizer: Any, problems: Sequence[Problem], system_prompt: Optional[str], max_prompt_tokens: int
) -> list[list[int]]:
    """Token ids of each problem's prompt (chat template + generation prompt)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    encoded = []
    for problem in problems:
        messages = build_messages(problem, system_prompt)
        if has_template:
            raw = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        else:
            raw = tokenizer.encode(_plain_prompt(messages))
        ids = _as_token_list(raw)
        if len(ids) > max_prompt_tokens:
            raise DataError(
                f"problem {problem.uid}: prompt is {len(ids)} tokens, over data.max_prompt_tokens={max_prompt_tokens}"
            )
        encoded.append(ids)
    return encoded


# -- sampling -----------------------------------------------------------------------------


class QuestionSampler:
    """Batches of questions, epoch by epoch: every question once per epoch, reshuffled per epoch.

    A batch that reaches the end of an epoch continues into the next one, so batches
    always hold ``questions_per_step`` questions. The order depends only on (seed, epoch),
    and ``state_dict`` / ``load_state_dict`` resume exactly where a run stopped.
    """

    def __init__(self, problems: Sequence[Problem], questions_per_step: int, seed: int, shuffle: bool = True) -> None:
        if not problems:
            raise ValueError("QuestionSampler needs at least one problem")
        if questions_per_step < 1:
            raise ValueError(f"questions_per_step must be >= 1, got {questions_per_step}")
        self.problems = list(problems)
        self.questions_per_step = questions_per_step
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.problems)))
        if self.shuffle:
            random.Random(f"sampler:{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self) -> list[Problem]:
        batch = []
        while len(batch) < self.questions_per_step:
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._epoch_order(self.epoch)
            batch.append(self.problems[self._order[self.position]])
            self.position += 1
        return batch

    def state_dict(self) -> dict:
        """Where the sampler stands, plus the seed and data size it is only valid for."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_problems": len(self.problems)}

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()``; raises ValueError if it was saved for other data or seed."""
        if state.get("num_problems", len(self.problems)) != len(self.problems):
            raise ValueError(
                f"sampler state is for {state['num_problems']} problems, this sampler has {len(self.problems)}"
            )
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']}, this sampler has seed {self.seed}")
        if not 0 <= state["position"] <= len(self.problems) or state["epoch"] < 0:
            raise ValueError(f"bad sampler state {state}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)
