"""One run per output folder: an exclusive lock on ``<output.dir>/.lock``, and the run's id.

The driver takes the lock when it creates the run folder and holds it for the run's life
(``Trainer.shutdown`` releases it; the kernel releases the lock of a killed driver). A second run on
the same folder is refused with one line naming the folder and the process holding it. The lock is
``flock`` on an open file: it belongs to the open file, not to the name, so the file is never deleted
(deleting it would let a second run lock a new file of the same name while the first still holds
the old one). Python opens files non-inheritable, so the Ray processes the driver starts do not
hold it on after the driver is gone.

The run id names what a run leaves outside its folder (the learner's shared-memory weight file). It
is made once per folder, kept in ``<output.dir>/run_id`` and read again by every later start (a
resume), so a start can find and remove what a killed earlier start of the same run left behind.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
from typing import Optional

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
RUN_ID_FILE = "run_id"
_RUN_ID = re.compile(r"[0-9a-f]{16}")


class RunLockError(RuntimeError):
    """The output folder is in use by another run, or its run id file is not one; the message names it."""


def new_run_id() -> str:
    """16 random hex digits (also safe inside a file name)."""
    return secrets.token_hex(8)


def pid_alive(pid: object) -> bool:
    """Whether a process ``pid`` exists on this host (a pid that is not a positive int: no)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False  # os.kill(0 or -n) would signal a process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunLock:
    """The held lock on one output folder and the id of the run in it; ``release`` gives it up."""

    def __init__(self, out_dir: str, lock_file, run_id: str):
        self.out_dir, self.run_id = out_dir, run_id
        self._file = lock_file  # a file object: if the owner is dropped unreleased, closing it releases the lock

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # the lock goes with the last descriptor of the open file, which is this one
            self._file = None


def acquire_run_lock(out_dir: str) -> RunLock:
    """Lock ``out_dir`` (created if missing) for this process without waiting; a folder another run
    holds raises ``RunLockError`` naming the folder and that run's pid and host. On a file system
    without locks the run goes ahead unlocked, with a warning."""
    import fcntl

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise RunLockError(f"output.dir {out_dir}: cannot open its lock file {path}: {e.strerror}") from e
    lock_file = os.fdopen(fd, "r+")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(lock_file)
        lock_file.close()
        raise RunLockError(f"output.dir {out_dir} is in use by another run ({holder}); "
                           "stop that run or give this one another output.dir") from None
    except OSError as e:  # a file system without locks (some network or FUSE mounts): run, but say so
        log.warning("output.dir %s: cannot lock %s (%s): a second run on this folder would not be refused",
                    out_dir, path, e.strerror)
    lock_file.truncate(0)
    lock_file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
    lock_file.flush()
    try:
        run_id = read_or_create_run_id(out_dir)
    except BaseException:
        lock_file.close()
        raise
    return RunLock(out_dir, lock_file, run_id)


def read_or_create_run_id(out_dir: str) -> str:
    """The id kept in ``<out_dir>/run_id``, made on the folder's first run. Call it holding the lock."""
    path = os.path.join(out_dir, RUN_ID_FILE)
    try:
        with open(path) as f:
            run_id = f.read().strip()
    except FileNotFoundError:
        run_id = new_run_id()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(run_id + "\n")
        return run_id
    if not _RUN_ID.fullmatch(run_id):
        raise RunLockError(f"{path}: {run_id[:40]!r} is not a run id (16 hex digits); delete the file to make a new one")
    return run_id


def _holder(lock_file) -> str:
    """Who holds a lock, as its holder wrote it ('pid 123 on host h'), or what is known."""
    try:
        lock_file.seek(0)
        holder: Optional[dict] = json.loads(lock_file.read() or "null")
        return f"pid {int(holder['pid'])} on host {holder['host']}"
    except (ValueError, TypeError, KeyError):  # the holder is between taking the lock and writing its pid
        return "pid not yet written"
