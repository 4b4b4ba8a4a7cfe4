"""Where benchmark results go: one JSON file per benchmark, with the command that produced it."""
from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def repo_relative(value):
    """``value`` with this checkout's absolute path made relative to the repository, this Python
    named ``python`` and the temporary folder ``$TMPDIR``, in every string of nested dicts and lists:
    recorded results name no path of the machine that made them."""
    if isinstance(value, str):
        value = value.replace(sys.executable, "python").replace(ROOT + os.sep, "").replace(ROOT, ".")
        return value.replace(tempfile.gettempdir() + os.sep, "$TMPDIR/")  # after ROOT: a checkout may lie in it
    if isinstance(value, dict):
        return {k: repo_relative(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [repo_relative(v) for v in value]
    return value


def command_line() -> str:
    """How this benchmark was started, as a command run from the repository root."""
    return repo_relative("python " + shlex.join(sys.argv))


def save_result(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(repo_relative({**data, "command": command_line()}), f, indent=1)


def rows_in_subprocesses(script: str, arg_lists: list[list[str]]) -> list[dict]:
    """Run ``python script *args --out <tmp>`` once per argument list, each in a fresh process (one
    in-process vLLM engine per process: a second one finds the first one's memory taken), and return
    the "rows" of all their results, in order."""
    import subprocess

    rows: list[dict] = []
    for args in arg_lists:
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            subprocess.run([sys.executable, script, *args, "--out", tmp.name], check=True)
            with open(tmp.name) as f:
                rows += json.load(f)["rows"]
    return rows
