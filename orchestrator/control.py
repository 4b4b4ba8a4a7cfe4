"""Run-time control of a running job through ``<output.dir>/control.json`` (``grpo scale``).

The driver reads the file between steps; today it carries the rollout pool's target size, so
engines can be added or removed while a run goes on (new ones receive the current weights first).
"""
from __future__ import annotations

import json
import os
from typing import Optional

CONTROL_FILE = "control.json"


def write_control(out_dir: str, rollout_workers: int) -> str:
    if rollout_workers < 1:
        raise ValueError(f"--rollout-workers must be >= 1, got {rollout_workers}")
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"{out_dir} is not a run folder (output.dir of a running job)")
    path = os.path.join(out_dir, CONTROL_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"rollout_workers": rollout_workers}, f)
    os.replace(tmp, path)
    return path


def clear_control(out_dir: str) -> None:
    """Forget the pending request (a refused one must not be applied again, nor by a resume)."""
    try:
        os.remove(os.path.join(out_dir, CONTROL_FILE))
    except FileNotFoundError:
        pass


def read_control(out_dir: str) -> Optional[dict]:
    """The requested settings, or None when there is no (valid) control file; a bad file is reported."""
    path = os.path.join(out_dir, CONTROL_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
        workers = int(data["rollout_workers"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"warning: ignoring {path}: {e}", flush=True)
        return None
    if workers < 1:
        print(f"warning: ignoring {path}: rollout_workers={workers} must be >= 1", flush=True)
        return None
    return {"rollout_workers": workers}
