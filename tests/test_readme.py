"""README.md's commands are true for someone who has only the repository.

Every shell command in README.md's ```bash blocks is extracted and checked:
* ``make T``: the Makefile has target T;
* ``grpo ...`` / ``.venv/bin/grpo ...``: the subcommand and every flag parse; a training config with its
  ``section.field=value`` overrides loads and validates; every path it reads exists after ``make model``
  and ``grpo prepare-data --from ../shared/data``, or lies in the output folder of a README training
  command (a final policy, a checkpoint, a running job);
* commands that need a cluster (``--address``, ``deploy/submit.sh``): a shell syntax check, and the
  script exists.
On a bare clone (no model, no data) each ``grpo`` command either runs or fails with one line naming
the command to run first. The slow subset runs the cheap ones for real: every training command with
``--dry-run``, every evaluation with ``--limit 2``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_DATA

README = ROOT / "README.md"
SHELL_BLOCK = re.compile(r"^```(bash|sh|shell)\s*$")
GRPO = ("grpo", ".venv/bin/grpo")


@dataclasses.dataclass
class Command:
    line: int  # 1-based line in README.md where the command starts
    text: str  # the command alone (continuations joined, comment dropped), quoted for a shell
    argv: list[str]
    raw: str = ""  # the whole shell line it came from, as written (for the syntax check)

    @property
    def id(self) -> str:
        return f"L{self.line}:{' '.join(self.argv)[:60]}"

    @property
    def needs_cluster(self) -> bool:
        return self.argv[0] == "deploy/submit.sh" or "--address" in self.argv

    @property
    def is_grpo(self) -> bool:
        return self.argv[0] in GRPO


def readme_commands(text: str) -> list[Command]:
    """Every command of the ```bash blocks: backslash continuations joined, comments dropped, and
    ``a && b`` / ``a; b`` split into their commands."""
    commands, in_block, pending, start = [], False, "", 0
    for no, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            in_block = not in_block and bool(SHELL_BLOCK.match(line))
            continue
        if not in_block or (not pending and not line.strip()):
            continue
        start = start if pending else no
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        raw = pending + line
        lexer = shlex.shlex(raw, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        argv: list[str] = []
        for token in [*lexer, "&&"]:
            if token in ("&&", ";", "||", "|"):
                if argv:
                    commands.append(Command(start, " ".join(shlex.quote(a) for a in argv), argv, raw))
                argv = []
            else:
                argv.append(token)
        pending = ""
    return commands


COMMANDS = readme_commands(README.read_text())


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


def parse_grpo(cmd: Command):
    from orchestrator.cli import build_parser

    try:
        return build_parser().parse_args(cmd.argv[1:])
    except SystemExit as exc:
        raise AssertionError(f"README line {cmd.line}: `{cmd.text}` does not parse (exit {exc.code})") from None


def train_config(cmd: Command):
    from orchestrator.cli import train_overrides
    from orchestrator.config import load_config

    args = parse_grpo(cmd)
    return args, load_config(args.config, train_overrides(args))


def produced_dirs() -> list[str]:
    """Output folders of the README's local training commands: what they write may be named later."""
    dirs = []
    for cmd in COMMANDS:
        if cmd.is_grpo and cmd.argv[1] == "train" and not cmd.needs_cluster:
            dirs.append(os.path.normpath(train_config(cmd)[1].output.dir))
    return dirs


def check_path(cmd: Command, path: str, produced: list[str], what: str) -> None:
    norm = os.path.normpath(path)
    if any(norm == d or norm.startswith(d + os.sep) for d in produced):
        return  # written by a README training command
    assert os.path.exists(path), f"README line {cmd.line}: {what} {path!r} does not exist (`{cmd.text}`)"


def check_command(cmd: Command, produced: list[str]) -> None:
    """All the checks of the module docstring that need no model run (cwd: a prepared sandbox)."""
    program = cmd.argv[0]
    if cmd.needs_cluster:
        script = ROOT / program if "/" in program and not program.startswith(".venv/") else None
        assert script is None or os.access(script, os.X_OK), f"README line {cmd.line}: {program} is not an executable script"
        proc = subprocess.run(["bash", "-n", "-c", cmd.raw or cmd.text], capture_output=True, text=True)
        assert proc.returncode == 0, f"README line {cmd.line}: shell syntax: {proc.stderr}"
        if cmd.is_grpo:
            parse_grpo(cmd)
        return
    if program == "make":
        targets = [a for a in cmd.argv[1:] if "=" not in a and not a.startswith("-")]
        missing = sorted(set(targets) - makefile_targets())
        assert targets and not missing, f"README line {cmd.line}: no Makefile target {missing or '(none named)'}"
        return
    assert cmd.is_grpo, f"README line {cmd.line}: `{cmd.text}`: no check for {program!r}; add one to {Path(__file__).name}"
    sub = cmd.argv[1]
    if sub == "train":
        args, cfg = train_config(cmd)
        check_path(cmd, args.config, produced, "config")
        from orchestrator.model_prep import looks_local

        if looks_local(cfg.model.path):
            check_path(cmd, cfg.model.path, produced, "model.path")
        for name in ("train_file", "eval_file"):
            source = getattr(cfg.data, name)
            if source and cfg.data.task != "arithmetic" and source.endswith(".jsonl"):
                check_path(cmd, source, produced, f"data.{name}")
        if args.resume and args.resume != "auto":
            check_path(cmd, args.resume, produced, "--resume")
    elif sub == "eval":
        args = parse_grpo(cmd)
        check_path(cmd, args.model, produced, "--model")
        if args.data_file:
            check_path(cmd, args.data_file, produced, "--data-file")
    elif sub == "scale":
        check_path(cmd, parse_grpo(cmd).output_dir, produced, "--output-dir")
    else:
        parse_grpo(cmd)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, tiny_model) -> Path:
    """A folder laid out like a clone after `make model` and `grpo prepare-data --from ../shared/data`."""
    from orchestrator.prepare_data import prepare_data

    if not SHARED_DATA.is_dir():
        pytest.skip("needs the local data mirror ../shared/data")
    root = tmp_path_factory.mktemp("readme")
    for name in ("configs", "deploy", "models"):
        (root / name).symlink_to(ROOT / name)
    prepare_data(str(root / "data"), mirror=str(SHARED_DATA))
    return root


def test_readme_starts_with_the_two_commands():
    assert [c.text for c in COMMANDS[:2]] == ["make train", "make test"]
    assert {"train", "test"} <= makefile_targets()
    assert len(COMMANDS) >= 15 and sum(c.is_grpo for c in COMMANDS) >= 10


def test_extraction_joins_continuations_drops_comments_and_splits_chains():
    text = "x\n```bash\nmake setup && make model   # both\ngrpo eval --model m \\\n    --limit 2  # two\n```\n```python\nnot = 'shell'\n```\n"
    assert [(c.line, c.argv) for c in readme_commands(text)] == [
        (3, ["make", "setup"]), (3, ["make", "model"]), (4, ["grpo", "eval", "--model", "m", "--limit", "2"])]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.id)
def test_readme_command_is_valid(cmd, sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    check_command(cmd, produced_dirs())


def test_checks_catch_a_wrong_command(sandbox, monkeypatch):
    """The checks above fail on the mistakes they exist for."""
    from orchestrator.config import ConfigError

    monkeypatch.chdir(sandbox)
    produced = produced_dirs()
    bad = [
        ("grpo train -c configs/tiny_cpu.yaml --no-such-flag", "does not parse"),
        ("grpo train -c configs/tiny_cpu.yaml rollout.no_such_field=1", "no_such_field"),
        ("grpo train -c configs/tiny_cpu.yaml rollout.group_size=0", "rollout.group_size"),
        ("grpo train -c configs/nope.yaml", "does not exist"),
        ("grpo train -c configs/tiny_cpu.yaml data.task=gsm8k data.train_file=data/gsm8k/dev.jsonl", "no such file"),
        ("grpo train -c configs/tiny_cpu.yaml --resume outputs/elsewhere/step_3", "--resume"),
        ("grpo eval --model models/nope --dataset arithmetic", "--model 'models/nope' does not exist"),
        ("grpo eval --model models/SmolLM2-135M-Instruct --dataset gsm8k --data-file data/gsm8k/dev.jsonl", "--data-file"),
        ("grpo scale --output-dir outputs/elsewhere --rollout-workers 2", "--output-dir"),
        ("grpo frobnicate", "does not parse"),
        ("make no-such-target", "no Makefile target"),
        ("curl http://example.com", "no check for 'curl'"),
        ("deploy/submit.sh http://HEAD:8265 configs/tiny_cpu.yaml (x", "shell syntax"),
    ]
    for text, why in bad:
        (cmd,) = readme_commands(f"```bash\n{text}\n```\n")
        with pytest.raises((AssertionError, ConfigError), match=re.escape(why)):
            check_command(cmd, produced)


def _grpo_in(cwd: Path, argv: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VLLM_CONFIGURE_LOGGING", None)  # stdout must hold only the result whatever vLLM logs
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_bare_clone_says_what_to_run_first(tmp_path, monkeypatch, capsys):
    """No model, no data: every local `grpo` command runs or fails with one line naming what to run."""
    from orchestrator.cli import main

    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    seen = 0
    for cmd in COMMANDS:
        if not cmd.is_grpo or cmd.needs_cluster or cmd.argv[1] in ("prepare-model", "prepare-data"):
            continue
        argv = cmd.argv[1:] + (["--dry-run"] if cmd.argv[1] == "train" else [])
        code = main(argv)
        out, err = capsys.readouterr()
        if code == 0:
            assert cmd.argv[1] == "config", f"`{cmd.text}` ran on a bare clone"
            continue
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), f"`{cmd.text}`:\n{err}"
        assert re.search(r"`grpo (prepare-model|prepare-data|train)", lines[0]) or "running job" in lines[0], lines[0]
        seen += 1
    assert seen >= 8


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.is_grpo and not c.needs_cluster
                                 and c.argv[1] in ("train", "eval")], ids=lambda c: c.id)
def test_readme_command_runs(cmd, sandbox, tiny_model, monkeypatch):
    """Training commands with --dry-run (pre-flight for real), evaluations on 2 questions; an evaluation
    of a README run's final policy uses the base model instead (no training here)."""
    monkeypatch.chdir(sandbox)
    argv = list(cmd.argv[1:])
    if argv[0] == "train":
        args = parse_grpo(cmd)
        if args.resume:
            pytest.skip("resumes a checkpoint of an earlier run (tests/integration/test_resume.py runs one)")
        proc = _grpo_in(sandbox, argv + ["--dry-run"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        plan = json.loads(proc.stdout)
        assert plan["status"] == "dry-run ok" and plan["steps"] == train_config(cmd)[1].total_steps
        assert plan["train_questions"] > 0 and plan["actors"]["rollout"] and plan["actors"]["learner"]
        return
    model = argv[argv.index("--model") + 1]
    if not os.path.isdir(sandbox / model):
        argv[argv.index("--model") + 1] = tiny_model
    if "--limit" in argv:
        argv[argv.index("--limit") + 1] = "2"
    else:
        argv += ["--limit", "2"]
    proc = _grpo_in(sandbox, argv + ["--max-new-tokens", "48"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    assert result["n"] == 2 and 0.0 <= result["accuracy"] <= 1.0
