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


def rows_in_subprocesses(script: str, arg_lists: list[list[str]]) -> list[dict]:
    """Run ``python script *args --out <tmp>`` once per argument list, each in a fresh process (one
    in-process vLLM engine per process: a second one finds the first one's memory taken), and return
    the "rows" of all their results, in order."""
    import subprocess
    import tempfile

    rows: list[dict] = []
    for args in arg_lists:
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            subprocess.run([sys.executable, script, *args, "--out", tmp.name], check=True)
            with open(tmp.name) as f:
                rows += json.load(f)["rows"]
    return rows
