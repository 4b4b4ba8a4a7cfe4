"""`ray job submit` for real: a Ray head started with `ray start --head`, the tiny job submitted
through the Job SDK with deploy/runtime_env.yaml, waited on until SUCCEEDED, and its logs read."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _auth_headers() -> dict:
    """`ray start` protects the dashboard with a token (RAY_AUTH_TOKEN, or the file it writes to
    ~/.ray/auth_token). Sent explicitly: the SDK's own lookup depends on RAY_AUTH_MODE as read when
    ray was first imported in this process."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", os.path.expanduser("~/.ray/auth_token"))
    if not token and os.path.exists(path):
        with open(path) as f:
            token = f.read().strip()
    return {"authorization": f"Bearer {token}"} if token else {}


@pytest.fixture
def ray_head():
    port, dashboard = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard}", "--num-cpus=4", "--include-dashboard=true",
                    f"--temp-dir={temp_dir}"], check=True, env=env, capture_output=True, timeout=300)
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_tiny_job_submitted_to_a_ray_head_succeeds(ray_head, tiny_model, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    with open(ROOT / "deploy" / "runtime_env.yaml") as f:
        runtime_env = yaml.safe_load(f)
    runtime_env["working_dir"] = str(ROOT)
    out = tmp_path / "job-run"
    client = JobSubmissionClient(ray_head, headers=_auth_headers())
    job_id = client.submit_job(
        entrypoint=(f"{sys.executable} -m orchestrator.cli train -c configs/tiny_cpu.yaml --address auto "
                    f"model.path={tiny_model} output.dir={out} total_steps=1 output.checkpoint_every=0 data.questions_per_step=2 "
                    "rollout.max_new_tokens=8 learner.num_cpus=1"),
        runtime_env=runtime_env,
    )
    deadline = time.time() + 1200
    status = client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.time() < deadline:
        time.sleep(5)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "[step 1/1]" in logs and '"status": "done"' in logs
    assert (out / "final" / "model.safetensors").exists()
