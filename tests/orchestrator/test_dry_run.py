"""`grpo train --dry-run`: the real pre-flight, the plan it prints, and no actor started."""
import json

import pytest

from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.dry_run import describe, dry_run
from orchestrator.placement import PlacementError
from tests.conftest import ROOT


def _cfg(tiny_model, *overrides):
    return load_config(str(ROOT / "configs/tiny_cpu.yaml"), [f"model.path={tiny_model}", *overrides])


def test_plan_of_the_tiny_config(tiny_model, tmp_path):
    import ray

    plan = dry_run(_cfg(tiny_model, f"output.dir={tmp_path / 'run'}", "reward.num_workers=2"))
    assert plan["status"] == "dry-run ok" and plan["task"] == "arithmetic"
    assert plan["train_questions"] == 2000 and plan["eval_questions"] == 0
    assert plan["steps"] == 3 and plan["samples_per_step"] == 4 * 8 and plan["epochs"] == round(3 * 4 / 2000, 3)
    assert plan["max_sequence_tokens"] == plan["max_prompt_tokens"] + 24
    assert plan["actors"] == {"rollout": [{"CPU": 1.0}], "learner": [{"CPU": 2.0}], "reward": [{"CPU": 0.5}] * 2}
    assert plan["resources_needed"] == {"CPU": 4.0}
    assert plan["cluster_resources"]["CPU"] >= 4.0 and plan["cluster_resources"]["GPU"] == 0.0
    assert plan["resume_from"] is None
    assert not ray.is_initialized()  # nothing was started, not even a local Ray
    assert not (tmp_path / "run").exists()  # nor the run's folder
    lines = describe(plan)
    assert lines[0].startswith("dry run: 2000 arithmetic questions, 3 steps of 32 samples")
    assert "  would start 2 reward actor(s): CPU 0.5" in lines


def test_shortfall_and_missing_checkpoint_are_named(tiny_model, tmp_path):
    with pytest.raises(PlacementError, match=r"GPU: need 2 \(learner 1, rollout 1\), cluster has 0"):
        dry_run(_cfg(tiny_model, "rollout.num_gpus_per_worker=1", "learner.num_gpus=1"))
    with pytest.raises(Exception, match="--resume: no checkpoint in"):
        dry_run(_cfg(tiny_model, f"output.dir={tmp_path}", "output.resume=auto"))
    # a retried job's if_exists resume starts fresh when there is nothing to resume
    assert dry_run(_cfg(tiny_model, f"output.dir={tmp_path}", "output.resume=if_exists"))["resume_from"] is None


def test_cli_prints_the_plan_as_json_and_the_summary_on_stderr(tiny_model, tmp_path, capsys):
    code = main(["train", "-c", str(ROOT / "configs/tiny_cpu.yaml"), f"model.path={tiny_model}",
                 f"output.dir={tmp_path}", "eval.every_steps=2", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0
    plan = json.loads(out)
    assert plan["eval_questions"] == 64 and plan["output_dir"] == str(tmp_path)
    assert err.startswith("dry run: 2000 arithmetic questions") and "would start 1 rollout actor(s)" in err


def test_cli_preflight_failures_are_one_line(tiny_model, tmp_path, capsys):
    bad_model = tmp_path / "not-a-model"
    bad_model.mkdir()
    code = main(["train", "-c", str(ROOT / "configs/tiny_cpu.yaml"), f"model.path={bad_model}", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: model.path={str(bad_model)!r}: cannot load the model's config (")


def test_unreachable_hub_model_is_one_line(tmp_path):
    """A hub name that cannot be loaded (here: the hub switched off, never contacted), in training and
    evaluation: exit 2, one line naming the model, before any engine or actor starts."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    for argv in (["train", "-c", "configs/tiny_cpu.yaml", "model.path=nobody/no-such-model", "--dry-run"],
                 ["eval", "--model", "nobody/no-such-model", "--dataset", "arithmetic", "--limit", "1"]):
        proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
        assert "'nobody/no-such-model': cannot load the model's config (" in lines[0]


def test_results_stream_is_the_only_thing_on_stdout(capfd):
    """Inside the block everything written to fd 1, by this process or a child, lands on stderr."""
    import subprocess

    from orchestrator.cli import stdout_for_results

    with stdout_for_results() as results:
        print("a log line")
        subprocess.run(["echo", "a child's line"], check=True)
        results.write('{"result": 1}\n')
    print("after")
    out, err = capfd.readouterr()
    assert out == '{"result": 1}\nafter\n'
    assert err == "a log line\na child's line\n"
