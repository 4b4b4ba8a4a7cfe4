"""One run per output folder: the lock on <output.dir>/.lock, the run id, and the driver taking both."""
import os
import signal
import subprocess
import sys

import pytest

from orchestrator.run_lock import RunLockError, acquire_run_lock, pid_alive
from tests.conftest import ROOT

HOLD = ("import sys, time; from orchestrator.run_lock import acquire_run_lock; "
        "lock = acquire_run_lock(sys.argv[1]); print(lock.run_id, flush=True); time.sleep(600)")


def _holder(out_dir):
    """Another process holding the lock on ``out_dir``; returns it and the run id it read."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc, proc.stdout.readline().strip()


def test_a_second_run_on_the_folder_is_refused_with_one_line_naming_the_holder(tmp_path):
    proc, run_id = _holder(tmp_path / "run")
    try:
        assert len(run_id) == 16
        with pytest.raises(RunLockError) as refused:
            acquire_run_lock(str(tmp_path / "run"))
        message = str(refused.value)
        assert "\n" not in message and f"output.dir {tmp_path / 'run'} is in use by another run" in message
        assert f"pid {proc.pid} on host" in message
    finally:
        proc.send_signal(signal.SIGKILL)  # the kernel releases a killed holder's lock
        proc.wait()
    lock = acquire_run_lock(str(tmp_path / "run"))
    assert lock.run_id == run_id  # the same run (a resume) keeps its id
    lock.release()
    assert acquire_run_lock(str(tmp_path / "run")).run_id == run_id  # released: free again


def test_the_lock_excludes_a_second_holder_in_the_same_process_and_frees_on_release(tmp_path):
    lock = acquire_run_lock(str(tmp_path))
    with pytest.raises(RunLockError, match=f"pid {os.getpid()} on host"):
        acquire_run_lock(str(tmp_path))
    lock.release()
    lock.release()  # twice is harmless
    acquire_run_lock(str(tmp_path)).release()


def test_a_bad_run_id_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "run_id").write_text("../../etc\n")
    with pytest.raises(RunLockError, match=r"run_id: '../../etc' is not a run id \(16 hex digits\)"):
        acquire_run_lock(str(tmp_path))
    (tmp_path / "run_id").unlink()
    assert len(acquire_run_lock(str(tmp_path)).run_id) == 16  # the failed attempt let go of the lock


def test_pid_alive():
    assert pid_alive(os.getpid())
    assert not pid_alive(2**22 + 1)  # above the kernel's pid limit
    assert not pid_alive(0) and not pid_alive(-1) and not pid_alive("1") and not pid_alive(None)


def _cfg(out_dir):
    from orchestrator.config import load_config

    return load_config("configs/tiny_cpu.yaml", [f"output.dir={out_dir}", "logging.dashboard=false"])


def test_the_driver_holds_the_run_folder_until_shutdown(tmp_path):
    from orchestrator.driver import PreflightError, Trainer

    first = Trainer(_cfg(tmp_path))
    try:
        with pytest.raises(PreflightError, match=f"output.dir {tmp_path} is in use by another run"):
            Trainer(_cfg(tmp_path))
    finally:
        first.shutdown()
    second = Trainer(_cfg(tmp_path))
    assert second.run_lock.run_id == first.run_lock.run_id
    second.shutdown()


def test_driver_shutdown_removes_a_dead_learners_weight_file(tmp_path):
    """The learner died (its file stays behind): the driver's shutdown removes the file of its run,
    and only that one."""
    from learner.weight_sync import shm_dir
    from orchestrator.driver import Trainer

    trainer = Trainer(_cfg(tmp_path))
    code = ("import sys; from learner.weight_sync import SharedWeightFile; "
            "print(*(SharedWeightFile(run_id).path for run_id in sys.argv[1:]))")
    mine, other = subprocess.run([sys.executable, "-c", code, trainer.run_lock.run_id, "0123456789abcdef"], cwd=ROOT,
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    try:
        assert os.path.dirname(mine) == shm_dir() and os.path.exists(mine) and os.path.exists(other)
        trainer.shutdown()
        assert not os.path.exists(mine) and os.path.exists(other)
    finally:
        for path in (mine, other):
            if os.path.exists(path):
                os.unlink(path)


def test_a_file_system_without_locks_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level("WARNING"):
        lock = acquire_run_lock(str(tmp_path))
    assert "cannot lock" in caplog.text and "a second run on this folder would not be refused" in caplog.text
    assert len(lock.run_id) == 16
    lock.release()
