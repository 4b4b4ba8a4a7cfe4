"""deploy/ recipes: the launcher and KubeRay YAML, the Dockerfile and the Grafana dashboard agree with the code.

Fast checks, no Ray cluster: structure of each file, and every ray_grpo_* series the dashboard plots is
one the code exports (orchestrator.metrics.prometheus_name of a key that the sources produce).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.metrics import prometheus_name

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ROLES = {"rollout": "rollout_node", "learner": "learner_node", "reward": "reward_node"}

# Per-step keys the dashboard plots, each produced by the code (checked below against the sources).
STEP_KEYS = [
    "reward/mean", "reward/accuracy", "reward/std", "reward/zero_std_groups", "eval/accuracy",
    "loss/loss", "loss/kl", "loss/clip_frac", "loss/grad_norm", "rollout/logprob_abs_diff",
    "rollout/tokens_per_s", "time/step_s", "time/generate_s", "time/reward_s", "time/learn_s", "time/sync_s",
    "response/length_mean", "response/truncated_frac",
    "orm/heldout_auc", "orm/heldout_accuracy", "prm/heldout_auc", "prm/heldout_accuracy",
    "iterative/reference_max_diff",
]
# Reward-model metrics leave the trainer as rm/<name> and are renamed <kind>/<name> (orchestrator/iterative.py).
RM_KINDS = ("orm", "prm")
WORKER_METRICS = {"grpo_worker_tokens_per_s", "grpo_worker_queue_depth", "grpo_worker_busy"}


@pytest.fixture(scope="module")
def source_text() -> str:
    files = [p for pkg in ("orchestrator", "learner", "reward", "rollout") for p in (ROOT / pkg).rglob("*.py")]
    return "\n".join(p.read_text() for p in files)


def _quoted(s: str, text: str) -> bool:
    return f'"{s}"' in text or f"'{s}'" in text


def _produced(key: str, text: str) -> bool:
    """The key appears as a string literal, or as an f-string prefix (f"loss/{k}") plus its last part quoted."""
    prefix, last = key.rsplit("/", 1)
    if _quoted(key, text):
        return True
    return (f'"{prefix}/{{' in text or f"'{prefix}/{{" in text) and _quoted(last, text)


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana_dashboard.json").read_text())


def _panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out += p.get("panels", [])  # collapsed rows keep their panels inside
    return out


def _series(dash: dict) -> set[str]:
    exprs = [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]
    return {m for e in exprs for m in re.findall(r"\bray_grpo_[A-Za-z0-9_]+", e)}


def _custom_resources(raw: str) -> dict:
    """KubeRay's rayStartParams resources value: '"{\\"x\\": 8}"' in YAML, a quoted JSON dict."""
    s = raw.strip()
    if s.startswith('"') and s.endswith('"'):
        s = s[1:-1].replace('\\"', '"')
    return json.loads(s)


# ------------------------------------------------------------------------------------------ launcher
def test_cluster_launcher_has_three_independent_worker_types():
    cfg = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types[cfg["head_node_type"]]["resources"].get("CPU") == 0
    for node_type, resource in (("rollout_gpu", "rollout_node"), ("learner_gpu", "learner_node"),
                                ("reward_cpu", "reward_node")):
        t = types[node_type]
        assert t["resources"].get(resource, 0) >= 1, node_type
        assert set(t["resources"]) & set(ROLES.values()) == {resource}, node_type
        assert 0 <= t["min_workers"] <= t["max_workers"], node_type
        assert t["node_config"]["InstanceType"]
    assert cfg["max_workers"] >= sum(types[t]["max_workers"] for t in ("rollout_gpu", "learner_gpu", "reward_cpu"))
    assert cfg["docker"]["image"].startswith("grpo-ray")
    assert any("pip install -e '.[gpu]'" in c for c in cfg["setup_commands"])
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in cfg["worker_start_ray_commands"])


def test_launcher_dashboard_is_public_only_with_token_auth():
    cfg = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    assert any("--dashboard-host=0.0.0.0" in c for c in cfg["head_start_ray_commands"])
    env = dict(o.split(" ", 1)[1].split("=", 1) for o in cfg["docker"]["run_options"] if o.startswith("--env "))
    assert env["RAY_AUTH_MODE"] == "token"  # in every container: head, workers, the job driver
    token = env["RAY_AUTH_TOKEN_PATH"]
    assert token.startswith("/shared/")  # one token, seen by every node
    (create,) = [c for c in cfg["head_setup_commands"] if token in c]
    assert "umask 077" in create and "secrets.token_hex" in create and f"[ -s {token} ]" in create


def test_gpu_extra_exists_in_pyproject():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"gpu", "cpu"} <= set(project["optional-dependencies"])
    ray_pin = next(d for d in project["dependencies"] if d.startswith("ray"))
    version = ray_pin.split("==")[1]
    assert f"rayproject/ray:{version}-" in (DEPLOY / "Dockerfile").read_text()


# ------------------------------------------------------------------------------------------- KubeRay
def test_rayjob_runs_train_on_three_worker_groups():
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kuberay_rayjob.yaml").read_text()) if d]
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    entry = spec["entrypoint"]
    assert "python -m orchestrator.cli train" in entry
    assert "-c configs/deepseekmath_7b.yaml" in entry and "--address auto" in entry
    assert "output.dir=/shared/runs/dsm7b" in entry
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    # a failed job is retried on a new cluster and continues from its checkpoints on the PVC
    assert spec["backoffLimit"] >= 1 and "output.resume=if_exists" in entry
    # the dashboard listens on 0.0.0.0 only with token authentication on
    assert spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}

    cluster = spec["rayClusterSpec"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == set(ROLES)
    for name, resource in ROLES.items():
        g = groups[name]
        assert set(_custom_resources(g["rayStartParams"]["resources"])) == {resource}
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    assert _custom_resources(groups["rollout"]["rayStartParams"]["resources"]) == {"rollout_node": 8}

    def container_limits(g):
        return g["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(container_limits(groups["rollout"])["nvidia.com/gpu"]) >= 1
    assert int(container_limits(groups["learner"])["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in container_limits(groups["reward"])

    # every pod (head and workers) runs the image and mounts the shared PVC at /shared
    pvc_names = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for pod in [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in groups.values()]:
        container = pod["containers"][0]
        assert container["image"].startswith("grpo-ray")
        assert any(m["mountPath"] == "/shared" for m in container["volumeMounts"])
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert claims and claims <= pvc_names


# -------------------------------------------------------------------------------------------- Docker
def test_dockerfile_installs_the_chosen_extra():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG EXTRA=gpu$", text, re.M)
    assert ".[${EXTRA}]" in text
    assert "WORKDIR /app" in text and "/app" in re.search(r"^COPY .*$", text, re.M).group(0)
    # the CPU build repeats the Makefile's torchvision/torchaudio/torchcodec removal
    assert "pip uninstall -y torchvision torchaudio torchcodec" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "models", "outputs"):
        assert entry in ignored
    assert any("__pycache__" in e for e in ignored)


# ------------------------------------------------------------------------------------------- Grafana
def test_dashboard_structure(dashboard):
    assert dashboard["schemaVersion"] == 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "label_values(ray_grpo_reward_mean, run)" in json.dumps(variables["run"])
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Rewards", "Loss", "Throughput", "Responses", "Workers", "Iterative RL"]
    for p in _panels(dashboard):
        if p["type"] == "row":
            continue
        assert p["type"] == "timeseries" and p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]


def test_dashboard_panels_do_not_overlap(dashboard):
    cells = set()
    for p in _panels(dashboard):
        g = p["gridPos"]
        box = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not box & cells, p["title"]
        cells |= box


def test_every_dashboard_series_is_exported_by_the_code(dashboard, source_text):
    exported = {"ray_" + prometheus_name(k): k for k in STEP_KEYS}
    assert len(exported) == len(STEP_KEYS), "prometheus_name must not merge two keys"
    series = _series(dashboard)
    worker = {s for s in series if s.startswith("ray_grpo_worker_")}
    assert {s[len("ray_"):] for s in worker} == WORKER_METRICS
    try:
        from orchestrator.worker_metrics import NAMES
    except ImportError:  # the worker gauges module is optional for this check
        NAMES = tuple(WORKER_METRICS)
    assert set(NAMES) == WORKER_METRICS
    step = series - worker
    assert step == set(exported), f"dashboard-only: {step - set(exported)}, unplotted: {set(exported) - step}"
    for key in STEP_KEYS:
        kind, name = key.split("/", 1)
        if kind in RM_KINDS:
            assert _quoted(f"rm/{name}", source_text), f"no reward-model trainer metric rm/{name}"
            assert _quoted(kind, source_text) and "{kind}/" in source_text, f"{key}: no rm/ -> {kind}/ renaming"
        else:
            assert _produced(key, source_text), f"no code produces the metric {key!r}"


def test_dashboard_queries_filter_and_label(dashboard):
    for p in _panels(dashboard):
        for t in p.get("targets", []):
            if "ray_grpo_worker_" in t["expr"]:
                assert "{{worker}}" in t["legendFormat"], p["title"]
            else:
                assert 'run=~"$run"' in t["expr"] and "{{run}}" in t["legendFormat"], p["title"]


def test_pin_base_image_rewrites_the_base_to_its_digest(tmp_path):
    """deploy/pin_base_image.sh with a stand-in `crane` (the registry is out of reach here)."""
    import os
    import shutil
    import subprocess

    (tmp_path / "deploy").mkdir()
    shutil.copy(DEPLOY / "Dockerfile", tmp_path / "deploy" / "Dockerfile")
    shutil.copy(DEPLOY / "pin_base_image.sh", tmp_path / "deploy" / "pin_base_image.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    crane = bin_dir / "crane"
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    tag = re.search(r"^ARG BASE_IMAGE=(.*)$", (DEPLOY / "Dockerfile").read_text(), re.M).group(1).split("@")[0]

    def pin(answer):
        crane.write_text(f"#!/bin/sh\n[ \"$1\" = digest ] && [ \"$2\" = \"{tag}\" ] && echo '{answer}'\n")
        crane.chmod(0o755)
        return subprocess.run(["bash", str(tmp_path / "deploy" / "pin_base_image.sh")], env=env,
                              capture_output=True, text=True)

    for digit in "ab":  # pinned, then pinned again (after a new push of the tag): one digest, the new one
        digest = "sha256:" + digit * 64
        done = pin(digest)
        assert done.returncode == 0 and done.stdout == f"{tag}@{digest}\n", done.stderr
        text = (tmp_path / "deploy" / "Dockerfile").read_text()
        assert re.search(rf"^ARG BASE_IMAGE={re.escape(tag)}@{digest}$", text, re.M)
        assert text.count("@sha256:") == 1
    refused = pin("not-a-digest")
    assert refused.returncode == 1 and "is not a digest" in refused.stderr
    assert (tmp_path / "deploy" / "Dockerfile").read_text() == text  # unchanged
    crane.unlink()
    if shutil.which("docker", path=env["PATH"]) is None:
        missing = subprocess.run(["bash", str(tmp_path / "deploy" / "pin_base_image.sh")], capture_output=True,
                                 text=True, env=env)
        assert missing.returncode == 1 and "needs crane or docker buildx" in missing.stderr
