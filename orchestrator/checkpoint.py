"""Resumable checkpoints of a run: layout, atomic publication, retention, lookup.

``<output.dir>/checkpoints/step_<N>/`` holds everything the run needs to continue after step N:

    policy/                 the policy in Hugging Face format (loadable by transformers and vLLM)
    learner/deepspeed/      DeepSpeed engine state: weights, AdamW moments, step counters
    learner/reference.safetensors, learner/rng.pt
    replay/<kind>/          the reward models' replay buffers (samples + reservoir RNG)
    rounds_recent.pkl       samples waiting for the next Iterative RL round
    state.json              step, data-loader position, driver RNG, reward-model paths and versions

A checkpoint is written into ``.partial-step_<N>`` and renamed into place only when complete, so a
crash mid-save leaves the previous checkpoints untouched (a leftover partial folder is deleted by
the next save). Only then are checkpoints beyond ``output.keep_last`` deleted, oldest first.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Callable, Optional

STATE_FILE = "state.json"
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
    for name in os.listdir(root):  # what an interrupted save left behind
        if name.startswith(".partial-"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    partial = os.path.join(root, f".partial-step_{step}")
    final = os.path.join(root, f"step_{step}")
    os.makedirs(partial)
    state = fill(partial)
    _write_json_atomic(os.path.join(partial, STATE_FILE), {**state, "step": step})
    stale = None
    if os.path.exists(final):  # a re-run of the same step (resumed from an earlier one): replace it
        stale = os.path.join(root, f".partial-replaced-step_{step}")
        os.replace(final, stale)
    os.replace(partial, final)
    _fsync_dir(root)
    if stale:
        shutil.rmtree(stale, ignore_errors=True)
    prune(out_dir, keep_last)
    return final


def prune(out_dir: str, keep_last: int) -> list[str]:
    """Delete all but the newest ``keep_last`` complete checkpoints; returns what was deleted."""
    found = list_checkpoints(out_dir)
    doomed = [path for _, path in found[: max(0, len(found) - keep_last)]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def truncate_jsonl(path: str, last_step: int) -> int:
    """Drop the records of steps after ``last_step`` (written after the checkpoint a run resumes
    from); returns how many were dropped. The file is rewritten atomically."""
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= last_step]
    if len(kept) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return len(lines) - len(kept)


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
