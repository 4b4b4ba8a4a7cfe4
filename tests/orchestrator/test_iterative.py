"""Iterative RL bookkeeping that needs no actors: held-out split by question, labelled-file loading."""
import json
import os

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


def _rounds(tmp_path):
    from types import SimpleNamespace

    from orchestrator.config import load_config
    from orchestrator.iterative import RewardModelRounds

    cfg = load_config("configs/tiny_cpu.yaml", [f"output.dir={tmp_path}"])
    trainer = SimpleNamespace(cfg=cfg, out_dir=str(tmp_path), rewards=SimpleNamespace(weights=SimpleNamespace(models=[])))
    return RewardModelRounds(trainer)


def _episode(i, **extra):
    from orchestrator.types import Episode

    return Episode(group_id=i, problem=Problem(f"q{i}", "1+1?", "2", "arithmetic"), prompt_token_ids=(1, 2),
                   response_token_ids=(3, 4, 5), sampler_logprobs=(-0.5, float("-inf"), -1e-9), response_text="2.",
                   finish_reason="stop", policy_version=i, **extra)


def test_samples_waiting_for_the_next_round_are_checkpointed_as_json(tmp_path):
    rounds = _rounds(tmp_path)
    rounds.recent = [([_episode(0), _episode(1, reward=1.0, correct=True, learned_reward=0.75)], None),
                     ([_episode(2).with_steps((0.5, 1.0), (0, 2))], [([0, 2], ["2", "."])])]
    folder = tmp_path / "ckpt"
    folder.mkdir()
    rounds.save(str(folder))
    assert os.listdir(folder) == ["rounds_recent.json"]
    assert len(json.loads((folder / "rounds_recent.json").read_text())["rounds"]) == 2
    restored = _rounds(tmp_path)
    restored.restore({"iteration": 3, "models": {}}, str(folder))
    assert restored.recent == rounds.recent and restored.iteration == 3


def test_a_pickle_in_the_checkpoint_is_never_loaded(tmp_path):
    """rounds_recent.pkl (older versions) is refused with one line: unpickling it could run code."""
    import pickle

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "rounds_recent.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(IterativeError, match=r"rounds_recent.json is missing \(it holds .*rounds_recent.pkl, a pickle"):
        _rounds(tmp_path).restore({"iteration": 1, "models": {}}, str(folder))
    assert not marker.exists()
    (folder / "rounds_recent.json").write_text('{"rounds": [{"episodes": [{"group_id": 0}], "steps": null}]}')
    with pytest.raises(IterativeError, match=r"rounds_recent.json: not the samples of a checkpoint \(KeyError"):
        _rounds(tmp_path).restore({"iteration": 1, "models": {}}, str(folder))
