"""`grpo scale` requests the cluster cannot hold are refused between steps: the run goes on at its
size and the request is cleared (stand-in engines and learner on a real Ray, in seconds)."""
import json

from orchestrator.control import write_control
from orchestrator.driver import Trainer
from tests.orchestrator.test_driver_loop import _cfg, fakes  # noqa: F401 - the fixture


def _train(cfg, capsys):
    trainer = Trainer(cfg)
    try:
        trainer.train()
    finally:
        trainer.shutdown()
    records = [json.loads(line) for line in open(f"{cfg.output.dir}/metrics.jsonl")]
    return records, capsys.readouterr().out


def test_a_request_beyond_the_cluster_is_refused_and_cleared(fakes, tmp_path, capsys):  # noqa: F811
    # 4 CPUs: learner 2 + reward 0.5 + one engine 1; 64 engines of 1 CPU cannot fit
    cfg = _cfg(fakes, tmp_path, "output.checkpoint_every=0", "resources.placement_timeout_s=5")
    write_control(str(tmp_path), 64)
    records, out = _train(cfg, capsys)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["rollout/num_engines"] for r in records] == [1, 1, 1, 1]
    assert "`grpo scale` to 64 engines refused (the cluster lacks resources: CPU: need 66.5" in out
    assert not (tmp_path / "control.json").exists()  # not applied again, nor by a resume


def test_a_request_that_fits_is_applied(fakes, tmp_path, capsys):  # noqa: F811
    cfg = _cfg(fakes, tmp_path, "output.checkpoint_every=0", "resources.num_cpus=6")
    write_control(str(tmp_path), 2)
    records, out = _train(cfg, capsys)
    assert [r["rollout/num_engines"] for r in records] == [2, 2, 2, 2]
    assert "rollout pool: scaling from 1 to 2 engines" in out and "refused" not in out
