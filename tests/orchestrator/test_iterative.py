"""Iterative RL bookkeeping that needs no actors: held-out split by question, labelled-file loading."""
import json

import pytest

from orchestrator.iterative import IterativeError, load_labelled, split_heldout
from orchestrator.types import Problem, RMSample


def _samples(questions, per_question):
    return [RMSample(Problem(f"q{q}", "?", "1", "arithmetic"), (f"{k}",), float(k == 0))
            for q in range(questions) for k in range(per_question)]


def test_heldout_split_is_by_question_and_seeded():
    samples = _samples(10, 4)
    train, held = split_heldout(samples, 0.2, seed=0)
    held_q = {s.problem.uid for s in held}
    assert len(held_q) == 2 and len(held) == 8 and len(train) == 32
    assert not held_q & {s.problem.uid for s in train}
    assert split_heldout(samples, 0.2, seed=0) == (train, held)
    assert split_heldout(samples, 0.0, seed=0) == (samples, [])
    assert split_heldout(_samples(1, 4), 0.5, seed=0)[1] == []  # one question: nothing to hold out


def test_load_labelled_names_the_bad_line(tmp_path):
    good = _samples(1, 2)
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(json.dumps(s.to_json()) for s in good) + "\n")
    assert load_labelled(str(path)) == good
    path.write_text(json.dumps(good[0].to_json()) + "\n" + '{"steps": ["x"]}\n')
    with pytest.raises(IterativeError, match=r"labels.jsonl:2"):
        load_labelled(str(path))
    path.write_text("\n")
    with pytest.raises(IterativeError, match="no labelled samples"):
        load_labelled(str(path))
