"""SIGTERM to a real training run (as from Ctrl-C's twin, `ray job stop` or preemption): the run
checkpoints, prints the resume command and exits 143, leaves no weight file or Ray process behind,
and the resumed run trains every question exactly once."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from orchestrator.checkpoint import list_checkpoints
from orchestrator.config import load_config
from orchestrator.data import QuestionSampler, load_problems
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _ray_processes() -> set[int]:
    names = ("raylet", "gcs_server")
    return {p.pid for p in psutil.process_iter(["name"]) if any(n in (p.info["name"] or "") for n in names)}


def _args(model, out, *extra):
    return ["train", "-c", "configs/tiny_cpu.yaml", f"model.path={model}", f"output.dir={out}",
            "data.questions_per_step=2", "rollout.max_new_tokens=12", "output.checkpoint_every=0",
            "output.save_final=false", "logging.dashboard=false", *extra]


def _start(args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CONFIGURE_LOGGING": "0"}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_checkpoints_then_resume_trains_each_question_once(tiny_model, tmp_path):
    out = tmp_path / "run"
    ray_before = _ray_processes()
    proc = _start(_args(tiny_model, out, "total_steps=20"))
    lines = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, f"the run ended early: {proc.stderr.read()[-3000:]}"
        lines.append(line)
        if line.startswith("[step 2/20]"):
            break
    proc.send_signal(signal.SIGTERM)  # step 3 is under way
    rest, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM: " in err and "stopped: stopped by SIGTERM" in err
    assert "to resume: grpo train -c" in err and "--resume" in err
    (last, _), = list_checkpoints(str(out))[-1:]
    assert last in (2, 3)  # step 3 abandoned (state after 2 saved) or finished and saved
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[:last] == list(range(1, last + 1))
    run_id = (out / "run_id").read_text().strip()
    assert not [f for f in os.listdir("/dev/shm") if run_id in f]
    time.sleep(2)
    assert not _ray_processes() - ray_before, "the run's Ray processes outlived it"

    resumed = _start(_args(tiny_model, out, f"total_steps={last + 1}", "--resume"))
    _, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-3000:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, last + 2))
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    cfg = load_config(str(ROOT / "configs/tiny_cpu.yaml"), [f"model.path={tiny_model}", "data.questions_per_step=2"])
    sampler = QuestionSampler(load_problems(cfg.data, "train", cfg.seed), 2, cfg.seed)
    expected = [[p.uid for p in sampler.next_batch()] for _ in range(last + 1)]
    by_step = {}
    for s in samples:
        by_step.setdefault(s["step"], []).append(s["uid"])
    assert [by_step[k] for k in sorted(by_step)] == expected  # each question once, in the sampler's order
