"""Resumable checkpoints of a run: layout, atomic publication, retention, lookup.

``<output.dir>/checkpoints/step_<N>/`` holds everything the run needs to continue after step N:

    policy/                 the policy in Hugging Face format (loadable by transformers and vLLM)
    learner/deepspeed/      DeepSpeed engine state: weights, AdamW moments, step counters
    learner/reference.safetensors, learner/rng_rank<r>.safetensors
    replay/<kind>/          the reward models' replay buffers (samples + reservoir RNG)
    rounds_recent.json      samples waiting for the next Iterative RL round
    state.json              step, data-loader position, driver RNG, reward-model paths and versions
    .writer.json            host and pid of the process that wrote it

Loading it runs no code from it: the files are JSON and safetensors, except DeepSpeed's own
(pickles), which the learner reads with ``weights_only`` (``learner.state_io.weights_only_loads``).

A checkpoint is written into ``.partial-step_<N>-<random>`` and renamed into place only when
complete, so a crash mid-save leaves the previous checkpoints untouched (the next save deletes a
leftover partial folder, unless its writer is still alive). Only then are checkpoints beyond
``output.keep_last`` deleted, oldest first.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from typing import Callable, Optional

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
WRITER_FILE = ".writer.json"
PARTIAL_PREFIX = ".partial-"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was asked for; the message says where it looked."""


def checkpoints_root(out_dir: str) -> str:
    return os.path.join(out_dir, "checkpoints")


def list_checkpoints(out_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints as (step, path), oldest first (partial folders are not listed)."""
    root = checkpoints_root(out_dir)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _STEP_DIR.match(name)
        if m and os.path.isfile(os.path.join(root, name, STATE_FILE)):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(found)


def find_checkpoint(out_dir: str, spec: str) -> str:
    """``spec``: 'auto' (the newest complete checkpoint of ``out_dir``) or a checkpoint folder."""
    if spec == "auto":
        found = list_checkpoints(out_dir)
        if not found:
            raise CheckpointError(f"--resume: no checkpoint in {checkpoints_root(out_dir)} "
                                  "(output.checkpoint_every was 0, or the run stopped before its first checkpoint)")
        return found[-1][1]
    if not os.path.isfile(os.path.join(spec, STATE_FILE)):
        raise CheckpointError(f"--resume {spec}: not a complete checkpoint (no {STATE_FILE})")
    return spec


def read_state(path: str) -> dict:
    with open(os.path.join(path, STATE_FILE)) as f:
        return json.load(f)


def write_checkpoint(out_dir: str, step: int, fill: Callable[[str], dict], keep_last: int) -> str:
    """Write checkpoint ``step``: ``fill(folder)`` writes the parts and returns the state dict, which
    goes in last; then the folder is renamed into place and old checkpoints are pruned."""
    root = checkpoints_root(out_dir)
    os.makedirs(root, exist_ok=True)
    sweep_partials(root)
    # a name of its own: a leftover partial folder that could not be deleted never blocks this save
    partial = os.path.join(root, f"{PARTIAL_PREFIX}step_{step}-{secrets.token_hex(4)}")
    final = os.path.join(root, f"step_{step}")
    os.makedirs(partial)
    _write_json_atomic(os.path.join(partial, WRITER_FILE), {"host": socket.gethostname(), "pid": os.getpid()})
    state = fill(partial)
    _write_json_atomic(os.path.join(partial, STATE_FILE), {**state, "step": step})
    stale = None
    if os.path.exists(final):  # a re-run of the same step (resumed from an earlier one): replace it
        stale = os.path.join(root, f"{PARTIAL_PREFIX}replaced-step_{step}-{secrets.token_hex(4)}")
        os.replace(final, stale)
    os.replace(partial, final)
    _fsync_dir(root)
    if stale:
        shutil.rmtree(stale, ignore_errors=True)
    prune(out_dir, keep_last)
    return final


def sweep_partials(root: str) -> list[str]:
    """Delete what interrupted saves left in ``root`` (``.partial-*`` folders); returns what was deleted.

    A partial folder whose writer (``.writer.json``) is another live process on this host is left
    alone. The run lock (``orchestrator.run_lock``) already keeps a second run out of the folder, but
    it is only as good as its file: after someone deletes ``.lock``, or while a run of an older version
    (which takes no lock) writes here, a second writer gets in, and this check still keeps its save
    whole. A writer on another host cannot be checked from here; its partial folder is deleted,
    trusting the lock (which shared file systems keep across hosts) that no such writer is running.
    """
    from orchestrator.run_lock import pid_alive

    deleted = []
    for name in sorted(os.listdir(root)):
        if not name.startswith(PARTIAL_PREFIX):
            continue
        path = os.path.join(root, name)
        writer = _read_writer(path)
        if writer and writer.get("host") == socket.gethostname() and writer.get("pid") != os.getpid() \
                and pid_alive(writer.get("pid")):
            log.warning("leaving %s: its writer (pid %s) is still running", path, writer["pid"])
            continue
        shutil.rmtree(path, ignore_errors=True)
        deleted.append(path)
    return deleted


def _read_writer(folder: str) -> Optional[dict]:
    """The writer a partial folder names, or None (no marker: an older version's, or torn before it)."""
    try:
        with open(os.path.join(folder, WRITER_FILE)) as f:
            writer = json.load(f)
    except (OSError, ValueError):
        return None
    return writer if isinstance(writer, dict) else None


def set_aside_newer(out_dir: str, step: int) -> Optional[str]:
    """Move the checkpoints newer than ``step`` out of the run's timeline, into
    ``checkpoints/abandoned-after-step_<step>-<time>/``: a run resumed from an older checkpoint makes
    them another history, which neither ``--resume`` nor pruning may pick up. Returns that folder
    (None: nothing newer)."""
    newer = [(s, path) for s, path in list_checkpoints(out_dir) if s > step]
    if not newer:
        return None
    aside = os.path.join(checkpoints_root(out_dir), f"abandoned-after-step_{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(aside)
    for _, path in newer:
        os.rename(path, os.path.join(aside, os.path.basename(path)))
    _fsync_dir(checkpoints_root(out_dir))
    return aside


def prune(out_dir: str, keep_last: int) -> list[str]:
    """Delete all but the newest ``keep_last`` complete checkpoints; returns what was deleted."""
    found = list_checkpoints(out_dir)
    doomed = [path for _, path in found[: max(0, len(found) - keep_last)]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def truncate_jsonl(path: str, last_step: int) -> int:
    """Drop the records of steps after ``last_step`` (written after the checkpoint a run resumes
    from); returns how many were dropped. Lines that are no record (a torn last line) are dropped
    with a warning (``read_jsonl``). The file is rewritten atomically."""
    from orchestrator.metrics import read_jsonl

    if not os.path.exists(path):
        return 0
    records = read_jsonl(path)
    kept = [line for line, record in records if record.get("step", 0) <= last_step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)
    return len(records) - len(kept)


def resume_hint(out_dir: str) -> Optional[str]:
    """The command that resumes a failed run, if it has a checkpoint."""
    found = list_checkpoints(out_dir)
    if not found:
        return None
    config = os.path.join(out_dir, "config.yaml")
    return f"grpo train -c {config} --resume   (continues after step {found[-1][0]})"


def _write_json_atomic(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
