import pytest

from orchestrator.config import load_config
from orchestrator.placement import PlacementError, check_cluster, engine_bundle, role_demands


def _cfg(*overrides):
    return load_config("configs/tiny_cpu.yaml", list(overrides))


def test_each_role_has_its_own_bundles():
    cfg = _cfg("rollout.num_workers=3", "rollout.num_gpus_per_worker=2", "rollout.tensor_parallel_size=2",
               "rollout.num_cpus_per_worker=4", "rollout.resources={rollout_node: 1}",
               "learner.num_gpus=1", "learner.num_cpus=8", "learner.resources={learner_node: 1}",
               "reward.num_workers=2", "reward.num_cpus_per_worker=0.5", "reward.resources={reward_node: 0.5}")
    demands = role_demands(cfg)
    assert demands["rollout"] == [{"CPU": 4.0, "GPU": 2.0, "rollout_node": 1.0}] * 3
    assert demands["learner"] == [{"CPU": 8.0, "GPU": 1.0, "learner_node": 1.0}]
    assert demands["reward"] == [{"CPU": 0.5, "reward_node": 0.5}] * 2
    # scaling rollout touches only the rollout bundles
    assert role_demands(cfg, num_engines=5)["learner"] == demands["learner"]
    assert len(role_demands(cfg, num_engines=5)["rollout"]) == 5


def test_reward_model_trainers_count_as_learner_ranks():
    cfg = _cfg("reward.orm_weight=1", "reward.rule_weight=0", "reward_model.num_cpus=3")
    assert role_demands(cfg)["learner"] == [{"CPU": 2.0}, {"CPU": 3.0}]


def test_cpu_engine_has_no_gpu_entry():
    assert engine_bundle(_cfg()) == {"CPU": 1.0}


def test_check_cluster_passes_when_everything_fits():
    cfg = _cfg("rollout.num_workers=2")
    check_cluster(role_demands(cfg), {"CPU": 4.5, "memory": 1e10})  # 2 engines + learner 2 + reward 0.5


def test_check_cluster_names_the_missing_resource_and_the_roles_asking():
    cfg = _cfg("rollout.num_workers=4", "rollout.num_gpus_per_worker=1", "rollout.resources={rollout_node: 1}",
               "learner.num_gpus=2")
    with pytest.raises(PlacementError) as err:
        check_cluster(role_demands(cfg), {"CPU": 64, "GPU": 4, "rollout_node": 2})
    msg = str(err.value)
    assert "GPU: need 6 (learner 2, rollout 4), cluster has 4" in msg
    assert "rollout_node: need 4 (rollout 4), cluster has 2" in msg
    assert "CPU" not in msg


def test_config_rejects_cpu_or_gpu_as_custom_resources():
    from orchestrator.config import ConfigError

    with pytest.raises(ConfigError, match="rollout.resources has GPU=1"):
        _cfg("rollout.resources={GPU: 1}")
    with pytest.raises(ConfigError, match="reward.resources has reward_node=0"):
        _cfg("reward.resources={reward_node: 0}")
    with pytest.raises(ConfigError, match="must be a mapping"):
        _cfg("learner.resources=[1, 2]")


def test_each_learner_rank_has_a_bundle():
    cfg = _cfg("learner.num_ranks=4", "learner.num_gpus=1", "learner.num_cpus=8", "data.questions_per_step=8")
    assert role_demands(cfg)["learner"] == [{"CPU": 8.0, "GPU": 1.0}] * 4
    with pytest.raises(PlacementError, match=r"GPU: need 4 \(learner 4\), cluster has 2"):
        check_cluster(role_demands(cfg, num_engines=0), {"CPU": 64.0, "GPU": 2.0})


def test_rank0_resources_pin_rank_zero_only():
    cfg = _cfg("learner.num_ranks=2", "data.questions_per_step=2", "learner.num_cpus=1", "learner.resources={gpu_box: 1}",
               "learner.rank0_resources={gpu_box: 1, head: 1}")
    assert role_demands(cfg)["learner"] == [{"CPU": 1.0, "gpu_box": 2.0, "head": 1.0}, {"CPU": 1.0, "gpu_box": 1.0}]
