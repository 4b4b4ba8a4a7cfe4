"""SIGTERM to a real training run (as from Ctrl-C's twin, `ray job stop` or preemption): sent while
an engine generates, the step is abandoned, the state after the previous step is checkpointed, the run
prints the resume command and exits 143, leaves no weight file or Ray process behind, and the resumed
run trains every question exactly once. Sent while the actors start, the run shuts them down and
exits 143 as well (not Ray's own handlers: exit 15, or an abort)."""
import json
import os
import re
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


def _titles_below(pid: int) -> list[str]:
    titles = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if cmd:
            titles.append(cmd[0])
    return titles


def _wait_for_title(proc, prefix: str, seconds: float = 120.0) -> None:
    """Until a process below the driver has a title starting with ``prefix`` (Ray names a busy actor's
    process after its class and method: ``ray::RolloutEngine.generate_stream``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(t.startswith(prefix) for t in _titles_below(proc.pid)):
            return
        assert proc.poll() is None, f"the run ended early: {proc.stderr.read()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no {prefix} process below the driver within {seconds}s")


def test_sigterm_during_generation_abandons_the_step_then_resume_trains_each_question_once(tiny_model, tmp_path):
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
    _wait_for_title(proc, "ray::RolloutEngine.generate")  # a step's generation (2 s of an 8 s step here)
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err[-3000:]
    # while the step can be dropped (generation, scoring) it is abandoned and the state before it saved;
    # a title read just as the learner took the batch: the step is finished, then saved
    abandoned = re.search(r"stopped: stopped by SIGTERM: step (\d+) abandoned", err)
    finished = re.search(r"stopped: stopped by SIGTERM after step (\d+), checkpointed", err)
    assert abandoned or finished, err[-3000:]
    assert "to resume: grpo train -c" in err and "--resume" in err
    (last, _), = list_checkpoints(str(out))[-1:]
    assert last >= 2 and last == (int(abandoned.group(1)) - 1 if abandoned else int(finished.group(1)))
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


def test_sigterm_while_the_actors_start_shuts_them_down_and_exits_143(tiny_model, tmp_path):
    out = tmp_path / "run"
    ray_before = _ray_processes()
    proc = _start(_args(tiny_model, out, "total_steps=2"))
    _wait_for_title(proc, "ray::RolloutEngine")  # Ray is up, an engine is loading its model
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "stopped: stopped by SIGTERM while starting: nothing was trained in this start" in err
    assert "SIGTERM received at time" not in err  # not Ray's C++ handler
    run_id = (out / "run_id").read_text().strip()
    assert not [f for f in os.listdir("/dev/shm") if run_id in f]
    deadline = time.monotonic() + 30
    while _ray_processes() - ray_before and time.monotonic() < deadline:
        time.sleep(1)
    assert not _ray_processes() - ray_before, "the run's Ray processes outlived it"
