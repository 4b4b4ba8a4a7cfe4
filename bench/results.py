"""Where benchmark results go: one JSON file per benchmark, with the command that produced it."""
from __future__ import annotations

import json
import os
import shlex
import sys


def save_result(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({**data, "command": "python " + shlex.join(sys.argv)}, f, indent=1)
