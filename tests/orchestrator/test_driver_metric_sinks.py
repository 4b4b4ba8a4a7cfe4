"""A training run with logging.tensorboard and logging.wandb_project (offline): the driver's loop on a
real Ray with stand-in engines and learner, then TensorBoard's and W&B's copies read back against
metrics.jsonl, the W&B run ended as finished by the run's end, as failed by a failure."""
import pytest

from orchestrator.driver import Trainer, TrainingError
from orchestrator.metrics import read_metrics
from tests.orchestrator.test_driver_loop import _cfg, _run, fakes  # noqa: F401  (fakes: a fixture)
from tests.orchestrator.test_metric_sinks import (
    _assert_same, _by_step, _tensorboard_scalars, network_trap, wandb_run,
)


@pytest.fixture
def wandb_server_trap(tmp_path, monkeypatch):
    with network_trap(monkeypatch, tmp_path / "home", proxies=False) as accepted:
        yield accepted


def test_a_run_logs_every_figure_to_tensorboard_and_wandb(fakes, wandb_server_trap, tmp_path):  # noqa: F811
    cfg = _cfg(fakes, tmp_path, "output.checkpoint_every=0", "total_steps=3", "logging.tensorboard=true",
               "logging.wandb_project=grpo-test", "logging.wandb_mode=offline")
    _run(cfg)
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2, 3] and "loss/loss" in records[0]
    _assert_same(_tensorboard_scalars(str(tmp_path / "tensorboard")), _by_step(records), rel=1e-6)
    history, _, exit_code = wandb_run(tmp_path)
    _assert_same(history, _by_step(records), rel=0)
    assert exit_code == 0 and wandb_server_trap == []


class FailsInStep2(Trainer):
    def run_step(self, step):
        if step == 2:
            raise RuntimeError("engine lost")
        return super().run_step(step)


def test_a_failed_run_ends_its_wandb_run_as_failed(fakes, wandb_server_trap, tmp_path):  # noqa: F811
    cfg = _cfg(fakes, tmp_path, "output.checkpoint_every=0", "total_steps=3",
               "logging.wandb_project=grpo-test", "logging.wandb_mode=offline")
    trainer = FailsInStep2(cfg)
    try:
        with pytest.raises(TrainingError, match="step 2 failed: engine lost"):
            trainer.train()
    finally:
        trainer.shutdown()
    history, _, exit_code = wandb_run(tmp_path)
    assert [step for step, _ in history["reward/mean"]] == [1] and exit_code == 1
