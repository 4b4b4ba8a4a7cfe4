"""DeepSpeed's JIT op builds: private directory per environment, stale build locks cleared."""
import os
import time

from learner.actor import EXTENSION_LOCK_MAX_AGE_S, use_private_extensions_dir


def test_stale_lock_removed_fresh_lock_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    fresh = tmp_path / "py311_cpu" / "other_op" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    old = time.time() - EXTENSION_LOCK_MAX_AGE_S - 60
    os.utime(stale, (old, old))
    assert use_private_extensions_dir() == str(tmp_path)
    assert not stale.exists()
    assert fresh.exists()  # a build may be running right now


def test_default_dir_is_inside_the_environment(monkeypatch):
    import sys

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert use_private_extensions_dir() == os.path.join(sys.prefix, "torch_extensions")
