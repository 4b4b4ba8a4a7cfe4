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


def test_truncate_jsonl_drops_a_torn_last_line_with_a_warning(tmp_path, caplog):
    """A SIGKILL or a full disk mid-append leaves half a record without its newline: resume drops it."""
    path = tmp_path / "samples.jsonl"
    whole = "".join(json.dumps({"step": s, "uid": f"q{s}"}) + "\n" for s in (1, 2, 3))
    path.write_text(whole + '{"step": 4, "uid": "q')
    with caplog.at_level("WARNING"):
        assert truncate_jsonl(str(path), 2) == 1  # step 3 dropped; the torn line is not a record
    assert path.read_text() == whole.split("\n", 2)[0] + "\n" + whole.split("\n", 2)[1] + "\n"
    assert "samples.jsonl: dropped its torn last line (line 4" in caplog.text
    # a complete record that lost only its newline is kept, and gets one
    path.write_text(json.dumps({"step": 1}) + "\n" + json.dumps({"step": 2}))
    assert truncate_jsonl(str(path), 2) == 0
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_a_torn_line_glued_to_a_later_append_is_dropped_and_counted(tmp_path, caplog):
    """A run that appended after a torn line glued its first record to it: that line is unreadable too."""
    from orchestrator.metrics import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "rew{"step": 2}\n{"step": 3}\n[4]\n')
    with caplog.at_level("WARNING"):
        assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 3]
        assert truncate_jsonl(str(path), 2) == 1
    assert "metrics.jsonl: dropped 2 unreadable lines (2, 4)" in caplog.text
    assert path.read_text() == '{"step": 1}\n'


def _live_process():
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def _partial(root, name, pid, host=None):
    import socket

    folder = root / name
    folder.mkdir(parents=True)
    (folder / ".writer.json").write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid}))
    (folder / "part.txt").write_text("half")
    return folder


def test_the_partial_sweep_leaves_a_live_writers_save_alone(tmp_path):
    root = tmp_path / "checkpoints"
    writer = _live_process()
    try:
        live = _partial(root, ".partial-step_3-aaaa", writer.pid)
        dead = _partial(root, ".partial-step_2-bbbb", 2**22 + 1)  # above pid_max: no such process
        unmarked = root / ".partial-step_1"  # an older version's, without a writer file
        unmarked.mkdir()
        elsewhere = _partial(root, ".partial-step_2-cccc", writer.pid, host="another-host")
        write_checkpoint(str(tmp_path), 4, _fill(), keep_last=2)
        assert live.is_dir() and (live / "part.txt").read_text() == "half"
        assert not dead.exists() and not unmarked.exists() and not elsewhere.exists()
    finally:
        writer.kill()
        writer.wait()
    write_checkpoint(str(tmp_path), 5, _fill(), keep_last=2)  # the writer is gone: its partial goes too
    assert sorted(os.listdir(root)) == ["step_4", "step_5"]


def test_a_partial_folder_that_cannot_be_deleted_does_not_block_the_save(tmp_path):
    """Each save writes into a folder of its own name (a live writer's partial of the same step stays)."""
    writer = _live_process()
    try:
        _partial(tmp_path / "checkpoints", ".partial-step_2", writer.pid)
        path = write_checkpoint(str(tmp_path), 2, _fill("mine"), keep_last=2)
        assert (tmp_path / "checkpoints" / "step_2" / "part.txt").read_text() == "mine"
        assert json.loads((tmp_path / "checkpoints" / "step_2" / ".writer.json").read_text())["pid"] == os.getpid()
        assert find_checkpoint(str(tmp_path), "auto") == path
    finally:
        writer.kill()
        writer.wait()


def test_resuming_from_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path):
    """Resume from step_50 while step_100 exists, then save step_60: the timeline is 50 -> 60, and
    neither pruning nor --resume reaches the abandoned step_100."""
    from orchestrator.checkpoint import STATE_FILE, set_aside_newer

    for step in (50, 100):
        write_checkpoint(str(tmp_path), step, _fill(), keep_last=5)
    aside = set_aside_newer(str(tmp_path), 50)
    assert os.path.basename(aside).startswith("abandoned-after-step_50-")
    assert sorted(os.listdir(aside)) == ["step_100"] and os.path.isfile(os.path.join(aside, "step_100", STATE_FILE))
    write_checkpoint(str(tmp_path), 60, _fill(), keep_last=2)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [50, 60]
    prune(str(tmp_path), 1)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [60]
    assert find_checkpoint(str(tmp_path), "auto").endswith("step_60")
    assert os.path.isdir(os.path.join(aside, "step_100"))  # kept, out of the way
    assert set_aside_newer(str(tmp_path), 60) is None
