"""Misbehaving verifiers for the reward-pool tests.

They live in an importable module (not in a test file) because the scorer's worker
process, started with forkserver/spawn, must import them by name.
"""
from __future__ import annotations

import time

from reward.verifiers import VERIFIERS

HANG_SECONDS = 60.0


def hanging_verifier(completion: str, gold: str) -> bool:
    """Never answers in time: sleeps far past any test's per-sample deadline."""
    time.sleep(HANG_SECONDS)
    return True


def raising_verifier(completion: str, gold: str) -> bool:
    """A buggy verifier: raises instead of returning a verdict."""
    raise ZeroDivisionError(f"cannot grade {completion!r}")


FAULTY_VERIFIERS = {
    **VERIFIERS,
    "hang": hanging_verifier,
    "boom": raising_verifier,
}
