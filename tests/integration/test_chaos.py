"""Chaos: a tiny training on a real local Ray while engines, reward workers, the learner and the driver are
killed at random phases (bench/chaos.py, kills only, two minutes of faults). Every step is recorded once,
every question of each epoch is trained once, the final step count is right and nothing is left behind.

Takes 8-15 minutes on a 2-core machine: marked ``chaos`` besides ``slow`` so that CI can leave it out
(``-m "not chaos"``)."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

KILLS = "kill-engine,kill-reward,kill-learner,kill-driver,term-driver"


@pytest.mark.timeout(1800)
def test_training_survives_random_kills(tiny_model, tmp_path):
    record = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, "bench/chaos.py", "--minutes", "2", "--seed", "0", "--faults", KILLS,
         "--out", str(tmp_path / "out"), "--record", str(record), "--budget-minutes", "25",
         "--set", f"model.path={tiny_model}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1750)
    assert record.exists(), proc.stderr[-3000:]
    result = json.loads(record.read_text())
    failed = {k: v["detail"] for k, v in result["invariants"].items() if not v["ok"]}
    assert not failed, json.dumps(failed, indent=1)
    assert result["aborted"] is None, result["aborted"]
    assert result["faults_injected"] >= 1
    assert result["samples_lost"] == 0 and result["samples_duplicated"] == 0
    assert result["faults_recovered"] == result["faults_injected"], result["faults"]
    assert proc.returncode == 0, proc.stderr[-3000:]
