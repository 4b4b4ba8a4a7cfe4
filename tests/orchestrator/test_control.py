import pytest

from orchestrator.cli import main
from orchestrator.control import read_control, write_control


def test_scale_request_round_trips(tmp_path):
    write_control(str(tmp_path), 3)
    assert read_control(str(tmp_path)) == {"rollout_workers": 3}


def test_no_or_bad_control_file_is_ignored(tmp_path, capsys):
    assert read_control(str(tmp_path)) is None
    (tmp_path / "control.json").write_text("{not json")
    assert read_control(str(tmp_path)) is None
    assert "ignoring" in capsys.readouterr().out
    (tmp_path / "control.json").write_text('{"rollout_workers": 0}')
    assert read_control(str(tmp_path)) is None


def test_write_control_rejects_bad_requests(tmp_path):
    with pytest.raises(ValueError, match=">= 1"):
        write_control(str(tmp_path), 0)
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        write_control(str(tmp_path / "nope"), 2)


def test_grpo_scale_cli(tmp_path, capsys):
    assert main(["scale", "--output-dir", str(tmp_path), "--rollout-workers", "4"]) == 0
    assert read_control(str(tmp_path)) == {"rollout_workers": 4}
    assert main(["scale", "--output-dir", str(tmp_path), "--rollout-workers", "0"]) == 2
    assert "error:" in capsys.readouterr().err
