import os
import re
import stat

import pytest
import torch
from safetensors.torch import load_file

from learner.weight_sync import mapped_safetensors, write_safetensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_file_is_valid_safetensors_with_tied_names(tmp_path, dtype):
    emb = torch.randn(10, 4, requires_grad=True)
    named = [("embed.weight", emb), ("lm_head.weight", emb),  # tied: same storage under two names
             ("w", torch.arange(6, dtype=torch.float32).reshape(2, 3).t()),  # non-contiguous
             ("scale", torch.tensor(3.0))]
    path = str(tmp_path / "w.safetensors")
    nbytes = write_safetensors(named, path, dtype)
    assert nbytes == (40 + 40 + 6 + 1) * dtype.itemsize
    out = load_file(path)
    assert set(out) == {n for n, _ in named}
    for name, t in named:
        assert out[name].dtype == dtype and torch.equal(out[name], t.detach().to(dtype)), name
    assert not os.path.exists(path + ".tmp")


def test_next_version_overwrites_the_file_in_place(tmp_path):
    """Same layout: the file keeps its inode (pages already allocated) and holds the new values;
    another layout: a new file replaces it."""
    path = str(tmp_path / "w.safetensors")
    write_safetensors([("a", torch.zeros(3, 2)), ("b", torch.ones(4))], path, torch.float32)
    inode = os.stat(path).st_ino
    write_safetensors([("a", torch.full((3, 2), 7.0)), ("b", torch.arange(4.0))], path, torch.float32)
    assert os.stat(path).st_ino == inode
    out = load_file(path)
    assert torch.equal(out["a"], torch.full((3, 2), 7.0)) and torch.equal(out["b"], torch.arange(4.0))
    write_safetensors([("a", torch.ones(5))], path, torch.float32)
    assert os.stat(path).st_ino != inode and torch.equal(load_file(path)["a"], torch.ones(5))
    assert not os.path.exists(path + ".tmp")


def test_engine_reads_the_file_as_views_without_copies(tmp_path):
    path = str(tmp_path / "w.safetensors")
    emb = torch.randn(6, 4)
    named = [("embed.weight", emb), ("lm_head.weight", emb), ("norm.weight", torch.randn(4))]
    for dtype in (torch.float32, torch.bfloat16):
        write_safetensors(named, path, dtype)
        got = dict(mapped_safetensors(path))
        assert list(got) == [n for n, _ in named]
        for name, t in named:
            assert got[name].dtype == dtype and torch.equal(got[name], t.to(dtype)), name


def test_shared_weight_file_is_private_unpredictable_and_written_in_place(tmp_path):
    from learner.weight_sync import SharedWeightFile

    a, b = SharedWeightFile("0123456789abcdef", str(tmp_path)), SharedWeightFile("0123456789abcdef", str(tmp_path))
    try:
        assert a.path != b.path
        name = os.path.basename(a.path)
        assert re.fullmatch(rf"grpo-weights-0123456789abcdef-{os.getpid()}-[0-9a-f]{{32}}\.safetensors", name)
        assert stat.S_IMODE(os.stat(a.path).st_mode) == 0o600
        inode = os.stat(a.path).st_ino
        a.write([("w", torch.ones(3))], torch.float32)
        a.write([("w", torch.full((3,), 2.0))], torch.float32)  # the next version, read by path
        assert os.stat(a.path).st_ino == inode and torch.equal(load_file(a.path)["w"], torch.full((3,), 2.0))
        a.write([("w", torch.ones(1))], torch.float32)  # a smaller layout: the file is cut to it
        assert torch.equal(load_file(a.path)["w"], torch.ones(1)) and os.stat(a.path).st_ino == inode
    finally:
        a.remove()
        b.remove()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match=r"run id '\.\./x': expected hex digits"):
        SharedWeightFile("../x", str(tmp_path))


def test_a_symlink_planted_at_the_weight_file_path_is_refused_not_followed(tmp_path, monkeypatch):
    import secrets

    from learner.weight_sync import SharedWeightFile

    victim = tmp_path / "victim"
    victim.write_text("precious")
    monkeypatch.setattr(secrets, "token_hex", lambda n: "ab" * n)  # the name someone guessed
    planted = tmp_path / f"grpo-weights-0123-{os.getpid()}-{'ab' * 16}.safetensors"
    planted.symlink_to(victim)
    with pytest.raises(FileExistsError):
        SharedWeightFile("0123", str(tmp_path))
    assert victim.read_text() == "precious" and planted.is_symlink()


WRITER = """
import sys, time, torch
from learner.weight_sync import SharedWeightFile
f = SharedWeightFile(sys.argv[1])  # as LearnerWorker.export_weights_file does
f.write([("w", torch.ones(1000))], torch.float32)
print(f.path, flush=True)
time.sleep(600)
"""


def _writer(run_id):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, run_id], cwd=root, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": root})
    return proc, proc.stdout.readline().strip()


def test_nothing_is_left_in_shared_memory_after_a_killed_writer_and_the_next_start():
    """A learner SIGKILLed mid-run leaves its weight file; the next start of the same run removes it,
    and leaves alone the file of a live writer and the files of other runs."""
    import signal

    from learner.weight_sync import shm_dir, sweep_weight_files
    from orchestrator.run_lock import new_run_id

    run_id, other_run = new_run_id(), new_run_id()
    killed, killed_path = _writer(run_id)
    live, live_path = _writer(run_id)
    other, other_path = _writer(other_run)
    try:
        assert os.path.dirname(killed_path) == shm_dir()
        for proc in (killed, other):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert os.path.exists(killed_path)  # a SIGKILL runs no clean-up
        assert sweep_weight_files(run_id) == [killed_path]
        assert not os.path.exists(killed_path) and os.path.exists(live_path) and os.path.exists(other_path)
        live.send_signal(signal.SIGKILL)
        live.wait()
        assert sweep_weight_files(run_id) == [live_path]
        assert not [n for n in os.listdir(shm_dir()) if n.startswith(f"grpo-weights-{run_id}")]
        assert os.path.exists(other_path)
    finally:
        for proc in (killed, live, other):
            proc.kill()
            proc.wait()
        for path in (killed_path, live_path, other_path):
            if os.path.exists(path):
                os.unlink(path)
