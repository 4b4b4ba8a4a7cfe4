"""The replay buffer and the 10% replay mix of Iterative RL."""
import json

import pytest

from orchestrator.types import Problem, RMSample
from reward.replay import ReplayBuffer, mix_with_replay, replay_count


def _samples(n, tag="s"):
    return [RMSample(Problem(f"{tag}{i}", "q", "1", "arithmetic"), (f"answer {i}",), float(i % 2)) for i in range(n)]


@pytest.mark.parametrize("new,expected", [(90, 10), (9, 1), (64, 7), (72, 8), (0, 0), (4, 0), (5, 1)])
def test_replay_count_makes_ten_percent_of_the_mix(new, expected):
    # n / (new + n) = 0.1  =>  n = new / 9, rounded to nearest
    assert replay_count(new, 0.1) == expected


@pytest.mark.parametrize("new", [9, 18, 45, 64, 90, 128, 200])
def test_mix_is_ten_percent_replay_within_rounding(tmp_path, new):
    buf = ReplayBuffer(str(tmp_path / "buf"), max_samples=1000, seed=0)
    buf.add(_samples(500, "old"))
    mixed, replayed = mix_with_replay(_samples(new, "new"), buf, 0.1)
    assert len(mixed) == new + replayed
    assert sum(s.problem.uid.startswith("old") for s in mixed) == replayed
    # rounding moves the count by at most half a sample
    assert abs(replayed - 0.1 * len(mixed)) <= 0.5 + 1e-9
    assert len({s.problem.uid for s in mixed}) == len(mixed)  # replayed samples are distinct


def test_mix_uses_what_the_buffer_has_when_short(tmp_path):
    buf = ReplayBuffer(str(tmp_path / "buf"), max_samples=10, seed=0)
    buf.add(_samples(3, "old"))
    mixed, replayed = mix_with_replay(_samples(90, "new"), buf, 0.1)
    assert replayed == 3 and len(mixed) == 93


def test_buffer_is_bounded_and_a_uniform_reservoir(tmp_path):
    buf = ReplayBuffer(str(tmp_path / "buf"), max_samples=50, seed=1)
    for chunk in range(20):
        buf.add(_samples(50, f"c{chunk:02d}-"))
    assert len(buf) == 50 and buf.seen == 1000
    chunks = {s.problem.uid.split("-")[0] for s in buf.samples}
    assert len(chunks) >= 10  # old chunks stay represented, not just the newest 50


def test_buffer_survives_a_restart_and_files_are_complete(tmp_path):
    d = str(tmp_path / "buf")
    buf = ReplayBuffer(d, max_samples=5, seed=3)
    buf.add(_samples(8))
    again = ReplayBuffer(d, max_samples=5, seed=99)
    assert [s.to_json() for s in again.samples] == [s.to_json() for s in buf.samples]
    assert again.seen == 8
    state = json.loads((tmp_path / "buf" / "state.json").read_text())
    assert state["size"] == 5 and not list((tmp_path / "buf").glob("*.tmp"))
    # the same random stream continues after a restart
    assert [s.problem.uid for s in again.sample(2)] == [s.problem.uid for s in buf.sample(2)]


def test_rejects_bad_ratio_and_size(tmp_path):
    with pytest.raises(ValueError):
        replay_count(10, 1.0)
    with pytest.raises(ValueError):
        ReplayBuffer(str(tmp_path / "b"), max_samples=0)
