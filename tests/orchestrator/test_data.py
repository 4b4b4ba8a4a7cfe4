"""Datasets, synthetic arithmetic, prompts and the question sampler."""
import json
import re
from pathlib import Path

import pytest

from orchestrator.config import DataConfig
from orchestrator.data import (
    DataError,
    QuestionSampler,
    _parse_hub_source,
    build_messages,
    encode_prompts,
    load_gsm8k,
    load_math,
    load_problems,
    make_arithmetic,
)
from orchestrator.types import Problem

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
GSM8K = SHARED_DATA / "gsm8k" / "train.jsonl"
MATH = SHARED_DATA / "math" / "dev.jsonl"
TOKENIZER_DIR = REPO / "models" / "SmolLM2-135M-Instruct"
needs_shared = pytest.mark.skipif(not GSM8K.exists() or not MATH.exists(), reason="../shared/data datasets not present")


def _write_jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _pairs(problems: list[Problem]) -> set[tuple[int, int]]:
    out = set()
    for p in problems:
        a, b = re.fullmatch(r"What is (\d+) \+ (\d+)\? Give only the final number\.", p.question).groups()
        out.add((int(a), int(b)))
    return out


# -- real data ----------------------------------------------------------------------------


@needs_shared
def test_load_real_gsm8k():
    problems = load_gsm8k(str(GSM8K))
    assert len(problems) == 7473
    first = problems[0]
    assert first.gold == "72"
    assert first.uid == "train.jsonl:1"
    assert first.task == "gsm8k"
    assert first.question.startswith("Natalia sold clips to 48 of her friends")
    assert problems[1].gold == "10"
    assert all("," not in p.gold for p in problems)  # '1,200' golds are stored as '1200'
    assert len({p.uid for p in problems}) == 7473


@needs_shared
def test_load_real_math():
    problems = load_math(str(MATH))
    assert len(problems) == 100
    assert problems[0].gold == "2"
    assert problems[7].gold == "\\frac{8}{15}"
    assert problems[7].uid == "dev.jsonl:8"
    assert {p.task for p in problems} == {"math"}


# -- bad rows -----------------------------------------------------------------------------


def test_bad_json_names_file_and_line(tmp_path):
    good = json.dumps({"question": "q", "answer": "x #### 3"})
    path = _write_jsonl(tmp_path / "broken.jsonl", [good, good, "{not json"])
    with pytest.raises(DataError, match=r"broken\.jsonl:3: not JSON \(Expecting property name"):
        load_gsm8k(path)


@pytest.mark.parametrize(
    "row, why",
    [
        ({"question": "q"}, "missing or empty field 'answer'"),
        ({"question": "", "answer": "#### 1"}, "missing or empty field 'question'"),
        ({"question": "q", "answer": "no marker"}, "no number after '####'"),
        (["a", "list"], "expected a JSON object"),
    ],
)
def test_bad_gsm8k_rows(tmp_path, row, why):
    path = _write_jsonl(tmp_path / "rows.jsonl", [json.dumps({"question": "q", "answer": "#### 1"}), json.dumps(row)])
    with pytest.raises(DataError, match=rf"rows\.jsonl:2: .*{re.escape(why)}"):
        load_gsm8k(path)


def test_math_answer_falls_back_to_boxed_solution(tmp_path):
    rows = [
        json.dumps({"problem": "p1", "solution": "so \\boxed{\\frac{1}{2}}."}),
        "",
        json.dumps({"problem": "p2", "solution": "s", "answer": 7}),
    ]
    problems = load_math(_write_jsonl(tmp_path / "m.jsonl", rows))
    assert [(p.uid, p.gold) for p in problems] == [("m.jsonl:1", "\\frac{1}{2}"), ("m.jsonl:3", "7")]
    bad = _write_jsonl(tmp_path / "m2.jsonl", [json.dumps({"problem": "p", "solution": "no box"})])
    with pytest.raises(DataError, match=r"m2\.jsonl:1: .*no 'answer' field"):
        load_math(bad)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_gsm8k(str(tmp_path / "absent.jsonl"))
    with pytest.raises(DataError, match="no gsm8k rows"):
        load_gsm8k(_write_jsonl(tmp_path / "empty.jsonl", [""]))


def test_hub_names(monkeypatch):
    assert _parse_hub_source("openai/gsm8k", "train") == ("openai/gsm8k", "main", "train")
    assert _parse_hub_source("openai/gsm8k:main:test", "train") == ("openai/gsm8k", "main", "test")
    assert _parse_hub_source("lighteval/MATH::validation", "train") == ("lighteval/MATH", None, "validation")
    with pytest.raises(DataError, match="name:config:split"):
        _parse_hub_source("a:b:c:d", "train")

    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return [{"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}, {"question": "q", "answer": "none"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DataError, match=r"openai/gsm8k:test row 2: .*no number after '####'"):
        load_gsm8k("openai/gsm8k", default_split="test")
    assert calls == [("openai/gsm8k", "main", "test")]


# -- arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize("digits", [1, 2, 3, 6])
def test_arithmetic_is_deterministic_disjoint_and_sized(digits):
    train, held = make_arithmetic(digits, 300, 50, seed=7)
    again_train, again_held = make_arithmetic(digits, 300, 50, seed=7)
    assert (train, held) == (again_train, again_held)
    assert len(train) == 300 and len(held) == 50
    assert not _pairs(train) & _pairs(held)
    low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    for p in train + held:
        a, b = next(iter(_pairs([p])))
        assert low <= a <= high and low <= b <= high
        assert p.gold == str(a + b)
        assert p.task == "arithmetic"
    other_train, _ = make_arithmetic(digits, 300, 50, seed=8)
    assert [p.question for p in other_train] != [p.question for p in train]


def test_arithmetic_one_digit_space_is_split_80_20():
    train, held = make_arithmetic(1, 2000, 200, seed=0)
    assert len(train) == 2000 and len(held) == 200
    train_pairs, held_pairs = _pairs(train), _pairs(held)
    assert len(held_pairs) == 20  # 20% of the 100 pairs held out
    assert len(train_pairs) == 80  # every remaining pair used at least once
    assert not train_pairs & held_pairs
    assert train[0].question == "What is 1 + 5? Give only the final number." and train[0].gold == "6"
    # Small requests that fit the space use distinct pairs.
    small_train, small_held = make_arithmetic(1, 50, 10, seed=0)
    assert len(_pairs(small_train)) == 50 and len(_pairs(small_held)) == 10
    assert make_arithmetic(1, 5, 0, seed=0)[1] == []


def test_arithmetic_rejects_bad_arguments():
    with pytest.raises(ValueError, match="digits"):
        make_arithmetic(0, 10, 10, 0)
    with pytest.raises(ValueError, match="train_size"):
        make_arithmetic(2, 0, 10, 0)


def test_load_problems_dispatch(tmp_path):
    cfg = DataConfig(task="arithmetic", arithmetic_digits=2, arithmetic_train_size=40, arithmetic_eval_size=8)
    train, held = load_problems(cfg, "train", seed=3), load_problems(cfg, "eval", seed=3)
    assert (train, held) == make_arithmetic(2, 40, 8, 3)
    path = _write_jsonl(tmp_path / "g.jsonl", [json.dumps({"question": "q", "answer": "#### 5"})])
    gsm = DataConfig(task="gsm8k", train_file=path)
    assert load_problems(gsm, "train", seed=0) == [Problem(uid="g.jsonl:1", question="q", gold="5", task="gsm8k")]
    assert load_problems(gsm, "eval", seed=0) == []
    with pytest.raises(ValueError, match="split"):
        load_problems(gsm, "test", seed=0)


# -- prompts ------------------------------------------------------------------------------


def test_build_messages_per_task():
    gsm = Problem("u1", "How many?", "3", "gsm8k")
    assert build_messages(gsm, None) == [
        {"role": "user", "content": 'How many?\nLet\'s think step by step and output the final answer after "####".'}
    ]
    math = Problem("u2", "Find x.", "1", "math")
    assert build_messages(math, "Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Find x.\nPlease reason step by step, and put your final answer within \\boxed{}."},
    ]
    arith = Problem("u3", "What is 1 + 2? Give only the final number.", "3", "arithmetic")
    assert build_messages(arith, None)[0]["content"] == "What is 1 + 2? Give only the final number."
    with pytest.raises(DataError, match="u4"):
        build_messages(Problem("u4", "q", "1", "chess"), None)


class FakeTokenizer:
    """One token per character; a chat template that returns a dict like transformers 5."""

    def __init__(self, chat_template="fake", as_dict=True):
        self.chat_template = chat_template
        self.as_dict = as_dict
        self.seen = []

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and tokenize
        self.seen.append(messages)
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"
        ids = [ord(c) for c in text]
        return {"input_ids": ids, "attention_mask": [1] * len(ids)} if self.as_dict else [ids]

    def encode(self, text):
        return [ord(c) for c in text]


def test_encode_prompts_with_a_fake_chat_template():
    problem = Problem("arith:0", "What is 1 + 2? Give only the final number.", "3", "arithmetic")
    expected = [ord(c) for c in "<system>S<user>What is 1 + 2? Give only the final number.<assistant>"]
    for as_dict in (True, False):
        tokenizer = FakeTokenizer(as_dict=as_dict)
        assert encode_prompts(tokenizer, [problem], "S", max_prompt_tokens=200) == [expected]
    assert len(expected) == 8 + 1 + 6 + 42 + 11  # <system>, S, <user>, question, <assistant>
    assert encode_prompts(FakeTokenizer(), [problem], "S", max_prompt_tokens=68) == [expected]
    with pytest.raises(DataError, match=r"arith:0: prompt is 68 tokens, over data.max_prompt_tokens=67"):
        encode_prompts(FakeTokenizer(), [problem], "S", max_prompt_tokens=67)


def test_encode_prompts_without_chat_template_uses_plain_text():
    problem = Problem("g:1", "How many?", "3", "gsm8k")
    [ids] = encode_prompts(FakeTokenizer(chat_template=None), [problem], None, max_prompt_tokens=500)
    text = "".join(chr(i) for i in ids)
    assert text == 'Question: How many?\nLet\'s think step by step and output the final answer after "####".\nAnswer:'


@pytest.mark.skipif(not TOKENIZER_DIR.exists(), reason=f"{TOKENIZER_DIR} not built (run `grpo prepare-model`)")
def test_encode_prompts_with_smollm_tokenizer():
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    problem = Problem("g:1", "What is 3 + 4? Give only the final number.", "7", "arithmetic")
    [ids] = encode_prompts(tokenizer, [problem], None, max_prompt_tokens=512)
    assert all(isinstance(i, int) for i in ids)
    text = tokenizer.decode(ids)
    assert "What is 3 + 4? Give only the final number." in text
    assert text.rstrip().endswith("assistant")  # generation prompt added
    with pytest.raises(DataError, match="g:1"):
        encode_prompts(tokenizer, [problem], None, max_prompt_tokens=len(ids) - 1)


# -- sampler ------------------------------------------------------------------------------


def _problems(n: int) -> list[Problem]:
    return [Problem(f"p{i}", f"q{i}", str(i), "arithmetic") for i in range(n)]


def test_sampler_unshuffled_order_crosses_epochs():
    sampler = QuestionSampler(_problems(5), questions_per_step=2, seed=0, shuffle=False)
    batches = [[p.uid for p in sampler.next_batch()] for _ in range(4)]
    assert batches == [["p0", "p1"], ["p2", "p3"], ["p4", "p0"], ["p1", "p2"]]
    assert sampler.state_dict() == {"epoch": 1, "position": 3, "seed": 0, "num_problems": 5}


def test_sampler_shuffles_each_epoch_deterministically():
    problems = _problems(6)
    a = QuestionSampler(problems, 3, seed=1)
    b = QuestionSampler(problems, 3, seed=1)
    epochs_a = [[p.uid for p in a.next_batch() + a.next_batch()] for _ in range(3)]
    epochs_b = [[p.uid for p in b.next_batch() + b.next_batch()] for _ in range(3)]
    assert epochs_a == epochs_b
    assert all(sorted(e) == sorted(p.uid for p in problems) for e in epochs_a)
    assert len({tuple(e) for e in epochs_a}) > 1  # reshuffled between epochs
    other = QuestionSampler(problems, 3, seed=2)
    assert [[p.uid for p in other.next_batch() + other.next_batch()] for _ in range(3)] != epochs_a


def test_sampler_resumes_exactly():
    problems = _problems(7)
    original = QuestionSampler(problems, 3, seed=5)
    for _ in range(4):
        original.next_batch()
    state = original.state_dict()
    resumed = QuestionSampler(problems, 3, seed=5)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    for _ in range(5):
        assert resumed.next_batch() == original.next_batch()
    with pytest.raises(ValueError, match="7 problems"):
        QuestionSampler(_problems(8), 3, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        QuestionSampler(problems, 3, seed=6).load_state_dict(state)


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least one"):
        QuestionSampler([], 2, seed=0)
    with pytest.raises(ValueError, match="questions_per_step"):
        QuestionSampler(_problems(2), 0, seed=0)
