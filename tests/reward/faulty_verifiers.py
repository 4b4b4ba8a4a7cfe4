"""Misbehaving verifiers for the scorer and reward-pool tests.

They live in an importable module (not in a test file) because the scorer's worker
process, started with forkserver/spawn, must import them by name.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from reward.verifiers import VERIFIERS

HANG_SECONDS = 60.0
HOG_CHUNK_MB = 16
HOG_LIMIT_MB = 1024
"""The hog stops here and answers True: a test with a lower cap fails instead of filling the machine."""


def hanging_verifier(completion: str, gold: str) -> bool:
    """Never answers in time: sleeps far past any test's per-sample deadline."""
    time.sleep(HANG_SECONDS)
    return True


def raising_verifier(completion: str, gold: str) -> bool:
    """A buggy verifier: raises instead of returning a verdict."""
    raise ZeroDivisionError(f"cannot grade {completion!r}")


def exiting_verifier(completion: str, gold: str) -> bool:
    """Calls sys.exit: a BaseException, not an Exception."""
    sys.exit(f"giving up on {completion!r}")


def dying_verifier(completion: str, gold: str) -> bool:
    """Its process ends at once, as after a crash in C code."""
    os._exit(3)


def killed_verifier(completion: str, gold: str) -> bool:
    """Its process is killed, as by the kernel's out-of-memory killer."""
    os.kill(os.getpid(), signal.SIGKILL)
    return True


def memory_hog_verifier(completion: str, gold: str) -> bool:
    """Writes HOG_CHUNK_MB MiB after another until an allocation fails (the address-space cap)."""
    chunks = [b"x" * (HOG_CHUNK_MB << 20) for _ in range(HOG_LIMIT_MB // HOG_CHUNK_MB)]
    return len(chunks) > 0


FAULTY_VERIFIERS = {
    **VERIFIERS,
    "hang": hanging_verifier,
    "boom": raising_verifier,
    "exit": exiting_verifier,
    "die": dying_verifier,
    "killed": killed_verifier,
    "hog": memory_hog_verifier,
}
