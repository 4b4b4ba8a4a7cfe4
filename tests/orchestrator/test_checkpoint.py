import json
import os

import pytest

from orchestrator.checkpoint import (
    CheckpointError, find_checkpoint, list_checkpoints, prune, read_state, resume_hint, truncate_jsonl,
    write_checkpoint,
)


def _fill(payload="x"):
    def fill(folder):
        with open(os.path.join(folder, "part.txt"), "w") as f:
            f.write(payload)
        return {"sampler": {"epoch": 0, "position": 4}}
    return fill


def test_checkpoint_is_published_complete_and_found(tmp_path):
    path = write_checkpoint(str(tmp_path), 3, _fill(), keep_last=2)
    assert path == str(tmp_path / "checkpoints" / "step_3")
    assert read_state(path) == {"sampler": {"epoch": 0, "position": 4}, "step": 3}
    assert find_checkpoint(str(tmp_path), "auto") == path
    assert find_checkpoint(str(tmp_path), path) == path


def test_keep_last_deletes_the_oldest_only_after_the_new_one_is_complete(tmp_path):
    for step in (1, 2, 3, 4):
        write_checkpoint(str(tmp_path), step, _fill(), keep_last=2)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [3, 4]
    assert prune(str(tmp_path), 1) == [str(tmp_path / "checkpoints" / "step_3")]


def test_a_crash_mid_save_leaves_the_previous_checkpoint_intact(tmp_path):
    write_checkpoint(str(tmp_path), 1, _fill("first"), keep_last=1)

    def crashing(folder):
        with open(os.path.join(folder, "part.txt"), "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_checkpoint(str(tmp_path), 2, crashing, keep_last=1)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [1]  # keep_last=1 did not delete it
    assert (tmp_path / "checkpoints" / "step_1" / "part.txt").read_text() == "first"
    assert find_checkpoint(str(tmp_path), "auto").endswith("step_1")
    # the next save clears the partial folder
    write_checkpoint(str(tmp_path), 2, _fill("second"), keep_last=1)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_2"]


def test_rewriting_the_same_step_replaces_it(tmp_path):
    write_checkpoint(str(tmp_path), 2, _fill("old"), keep_last=2)
    write_checkpoint(str(tmp_path), 2, _fill("new"), keep_last=2)
    assert (tmp_path / "checkpoints" / "step_2" / "part.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_2"]


def test_find_checkpoint_errors_name_the_place(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in .*checkpoints"):
        find_checkpoint(str(tmp_path), "auto")
    (tmp_path / "checkpoints" / "step_5").mkdir(parents=True)  # no state.json: incomplete
    with pytest.raises(CheckpointError, match="no checkpoint"):
        find_checkpoint(str(tmp_path), "auto")
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        find_checkpoint(str(tmp_path), str(tmp_path / "checkpoints" / "step_5"))


def test_truncate_jsonl_drops_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "v": s * 10}) + "\n" for s in (1, 2, 3, 4)))
    assert truncate_jsonl(str(path), 2) == 2
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert truncate_jsonl(str(path), 2) == 0
    assert truncate_jsonl(str(tmp_path / "missing.jsonl"), 2) == 0


def test_resume_hint_names_the_saved_config_and_step(tmp_path):
    assert resume_hint(str(tmp_path)) is None
    write_checkpoint(str(tmp_path), 7, _fill(), keep_last=2)
    hint = resume_hint(str(tmp_path))
    assert hint.startswith(f"grpo train -c {tmp_path}/config.yaml --resume") and "after step 7" in hint
