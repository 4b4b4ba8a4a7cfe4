"""A two-node Ray cluster on one machine (deploy/two_node_learner.sh): the learner's two ranks on both
nodes, rendezvousing across them, and the rollout engine on the node without rank 0, whose weights
then travel across nodes through the object store; two steps, each synced to the engine."""
import json
import os
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.multinode]  # `make test-multinode`: its `ray stop --force` stops all Ray here

BIN = os.path.dirname(sys.executable)


def test_learner_ranks_and_engine_across_two_nodes(tiny_model, tmp_path):
    out = tmp_path / "two-nodes"
    env = {**os.environ, "RAY": os.path.join(BIN, "ray"), "GRPO": os.path.join(BIN, "grpo"), "PORT": "6391",
           "TMP_ROOT": tempfile.mkdtemp(prefix="g2n", dir="/tmp"), "VLLM_CONFIGURE_LOGGING": "0",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", "deploy/two_node_learner.sh", str(out), f"model.path={tiny_model}",
                           "logging.ray_metrics=false"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "learner: 2 ranks (STRICT_SPREAD), rendezvous at" in proc.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert r["sync/engines_other_node"] == 1  # the engine is not on rank 0's node
        assert r["rollout/engine_version_min"] == r["policy_version"] == r["step"]
    # step 2 was sampled with the weights of step 1, sent across nodes: the engine agrees with the learner
    assert records[1]["rollout/logprob_abs_diff"] < 2e-3 and records[1]["loss/kl"] > 0
