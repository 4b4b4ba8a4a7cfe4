"""Two learner ranks through the real CLI: a run with ``learner.num_ranks=2`` checkpoints every rank's
DeepSpeed shard; its resume loses rank 1 (SIGKILL) and ends with the last checkpoint and the resume
command; a second resume trains the remaining step, each question once; a resume with another rank
count is refused in one line."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

ARGS = ["train", "-c", "configs/tiny_cpu.yaml", "total_steps=2", "data.questions_per_step=2",
        "rollout.max_new_tokens=8", "learner.lr=1e-4", "learner.num_ranks=2", "learner.num_cpus=1",
        "learner.micro_batch_size=8", "resources.num_cpus=6", "output.save_final=false",
        "output.checkpoint_every=1", "logging.ray_metrics=false"]


def _env():
    return {**os.environ, "VLLM_CONFIGURE_LOGGING": "0", "PYTHONPATH": str(ROOT)}


def _grpo(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _learner_ranks(port: int) -> tuple[int, int]:
    """(rank 0's pid, rank 1's pid): rank 0 is the LearnerWorker that listens on the rendezvous port."""
    workers = [p for p in psutil.process_iter(["cmdline"]) if "LearnerWorker" in " ".join(p.info["cmdline"] or [])]
    assert len(workers) == 2, [p.info["cmdline"] for p in workers]
    listening = [p.pid for p in workers
                 if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in p.net_connections("tcp"))]
    assert len(listening) == 1
    return listening[0], next(p.pid for p in workers if p.pid != listening[0])


def _uids_by_step(out):
    by_step = {}
    for line in (out / "samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        by_step.setdefault(record["step"], []).append(record["uid"])
    return by_step


def test_two_ranks_train_checkpoint_lose_a_rank_and_resume(tiny_model, tmp_path):
    out = tmp_path / "run"
    proc = _grpo(*ARGS, f"model.path={tiny_model}", f"output.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "learner: 2 ranks (PACK), rendezvous at" in proc.stdout
    state = json.loads((out / "checkpoints" / "step_2" / "state.json").read_text())
    assert state["learner_ranks"] == 2 and state["policy_version"] == 2
    learner_dir = out / "checkpoints" / "step_2" / "learner"
    shards = sorted(os.listdir(learner_dir / "deepspeed" / "state"))
    assert [f for f in shards if f.startswith("zero_pp_rank_")] == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert {"rng_rank0.safetensors", "rng_rank1.safetensors"} <= set(os.listdir(learner_dir))

    # another rank count: one line, before anything is trained
    t0 = time.time()
    proc = _grpo("train", "-c", str(out / "config.yaml"), "total_steps=3", "learner.num_ranks=1",
                 "learner.micro_batch_size=16", "--resume")
    assert proc.returncode != 0 and time.time() - t0 < 60  # refused at pre-flight, before any actor starts
    assert "trained with learner.num_ranks=2, this run has 1: resume with learner.num_ranks=2" in proc.stderr
    assert "num_ranks: 2" in (out / "config.yaml").read_text()  # a refused start leaves the run's config alone

    # resume towards step 3 and SIGKILL rank 1 once the run is back on its feet
    log = open(tmp_path / "resume.err", "w+")  # a file, not a pipe: nobody reads stderr while the run goes on
    run = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "train", "-c", str(out / "config.yaml"),
                            "total_steps=3", "--resume"], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                           stderr=log, text=True)
    lines, port, deadline = [], None, time.time() + 600
    for line in run.stdout:
        lines.append(line)
        found = re.search(r"rendezvous at [\d.]+:(\d+)", line)
        port = int(found.group(1)) if found else port
        if "resumed from" in line:
            break
        assert time.time() < deadline, "".join(lines)
    _, rank1 = _learner_ranks(port)
    os.kill(rank1, signal.SIGKILL)
    run.communicate(timeout=600)
    err = (tmp_path / "resume.err").read_text()
    assert run.returncode == 1, err[-3000:]
    assert "learner-rank-1 died" in err
    assert f"to resume: grpo train -c {out / 'config.yaml'} --resume   (continues after step 2)" in err
    assert sorted(os.listdir(out / "checkpoints"))[-1] == "step_2"  # nothing after the last checkpoint
    assert sorted(_uids_by_step(out)) == [1, 2]
    assert not [p for p in psutil.process_iter(["cmdline"]) if "LearnerWorker" in " ".join(p.info["cmdline"] or [])]

    # the second resume trains step 3: each question of the run once
    proc = _grpo("train", "-c", str(out / "config.yaml"), "total_steps=3", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_step = _uids_by_step(out)
    assert sorted(by_step) == [1, 2, 3]
    questions = [uid for uids in by_step.values() for uid in sorted(set(uids))]
    assert len(questions) == len(set(questions)) == 6
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and last["policy_version"] == 3 and last["rollout/logprob_abs_diff"] < 2e-3
