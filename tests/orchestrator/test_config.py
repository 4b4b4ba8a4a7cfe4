"""The config tree: YAML + overrides, type coercion, validation naming the field, field docs."""
import dataclasses

import pytest

from orchestrator.config import (
    ConfigError, TrainConfig, describe, field_docs, load_config, parse_overrides,
)
from tests.conftest import ROOT, SHARED_DATA


def test_defaults_validate():
    cfg = TrainConfig().validate()
    assert cfg.algorithm.kl_coef == 0.04 and cfg.algorithm.clip_eps == 0.2 and cfg.algorithm.mu == 1


def test_every_field_has_a_docstring():
    def walk(cls):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default))

    walk(TrainConfig)
    lines = describe()
    assert any(line.startswith("rollout.group_size = 8  # G:") for line in lines)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  group_size: 4\nlearner:\n  lr: 3.0e-6\n  micro_batch_size: 4\n")
    cfg = load_config(str(path), ["rollout.group_size=16", "learner.lr=2e-5", "data.shuffle=false",
                                  "learner.adam_betas=[0.8,0.9]", "resources.address=none"])
    assert cfg.rollout.group_size == 16
    assert cfg.learner.lr == pytest.approx(2e-5) and isinstance(cfg.learner.lr, float)
    assert cfg.data.shuffle is False
    assert cfg.learner.adam_betas == (0.8, 0.9)
    assert cfg.resources.address is None


def test_parse_overrides_nests():
    assert parse_overrides(["a.b=1", "a.c=x", "d=2.5"]) == {"a": {"b": 1, "c": "x"}, "d": 2.5}


@pytest.mark.parametrize("override, field", [
    (["rollout.group_size=1"], "rollout.group_size"),
    (["algorithm.off_policy_lag=2"], "algorithm.off_policy_lag"),
    (["algorithm.off_policy_lag=1"], "algorithm.off_policy_lag"),  # needs old_logprobs='sampler'
    (["output.keep_last=0"], "output.keep_last"),
    (["output.checkpoint_every=-1"], "output.checkpoint_every"),
    (["rollout.max_restarts=-1"], "rollout.max_restarts"),
    (["reward.overlap_samples=-1"], "reward.overlap_samples"),
    (["algorithm.clip_eps=1.5"], "algorithm.clip_eps"),
    (["learner.zero_stage=4"], "learner.zero_stage"),
    (["learner.num_ranks=0"], "learner.num_ranks"),
    (["learner.num_ranks=1.5"], "learner.num_ranks"),
    (["learner.placement_strategy=RANDOM"], "learner.placement_strategy"),
    (["data.task=poetry"], "data.task"),
    (["rollout.group_size=abc"], "rollout.group_size"),
    (["rollout.group_size=2.5"], "rollout.group_size"),
    (["data.shuffle=maybe"], "data.shuffle"),
    (["learner.micro_batch_size=3"], "learner.micro_batch_size"),
    (["data.task=gsm8k"], "data.train_file"),
    (["data.task=gsm8k", "data.train_file=/nope/train.jsonl"], "data.train_file"),
    (["rollout.nonsense=1"], "rollout.nonsense"),
    (["rollout=3"], "rollout"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, override)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nope.yaml")


def test_shipped_configs():
    tiny = load_config(str(ROOT / "configs/tiny_cpu.yaml"))
    assert tiny.data.task == "arithmetic" and tiny.total_steps <= 5
    paper = load_config(str(ROOT / "configs/deepseekmath_7b.yaml"))
    assert paper.rollout.group_size == 64
    assert paper.rollout.max_new_tokens == 1024
    assert paper.learner.lr == pytest.approx(1e-6)
    assert paper.algorithm.kl_coef == pytest.approx(0.04)
    assert paper.algorithm.mu == 1
    assert paper.data.questions_per_step * paper.rollout.group_size == 1024


def test_local_gsm8k_file_accepted():
    cfg = load_config(None, ["data.task=gsm8k", f"data.train_file={SHARED_DATA / 'gsm8k/train.jsonl'}"])
    assert cfg.data.train_file.endswith("train.jsonl")


def test_variant_names_match_the_registries():
    from learner.algorithm import KL_ESTIMATORS as KL_REGISTRY
    from learner.algorithm import LOSS_AGGREGATIONS
    from orchestrator.config import KL_ESTIMATORS, LOSS_AGGS

    assert sorted(LOSS_AGGS) == sorted(LOSS_AGGREGATIONS.names())
    assert sorted(KL_ESTIMATORS) == sorted(KL_REGISTRY.names())


@pytest.mark.parametrize("override, field", [
    (["algorithm.supervision=token"], "algorithm.supervision"),
    (["algorithm.loss_agg=sum"], "algorithm.loss_agg"),
    (["algorithm.kl_estimator=k4"], "algorithm.kl_estimator"),
    (["algorithm.supervision=process", "algorithm.kl_placement=reward"], "algorithm.kl_placement"),
    (["algorithm.old_logprobs=engine"], "algorithm.old_logprobs"),
])
def test_variant_fields_validated(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, override)


@pytest.mark.parametrize("override, field", [
    (["reward.rule_weight=0"], "reward.rule_weight"),  # nothing left to reward with
    (["reward.orm_weight=-1"], "reward.orm_weight"),
    (["reward.prm_weight=1"], "reward.prm_weight"),  # a PRM needs process supervision
    (["reward.orm_weight=1", "reward.orm_path=/nope/rm"], "reward.orm_path"),
    (["iterative.every_steps=2"], "iterative.every_steps"),  # no learned reward to retrain
    (["reward.orm_weight=1", "iterative.every_steps=1", "iterative.replay_ratio=1.0"], "iterative.replay_ratio"),
    (["reward_model.prm_label=medium"], "reward_model.prm_label"),
    (["reward_model.zero_stage=3"], "reward_model.zero_stage"),
    (["reward_model.labels_file=/nope.jsonl"], "reward_model.labels_file"),
    (["reward_model.heldout_frac=1"], "reward_model.heldout_frac"),
])
def test_reward_model_fields_validated(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, override)


def test_shipped_reward_model_configs():
    orm = load_config(str(ROOT / "configs/tiny_orm.yaml"))
    assert orm.reward.orm_weight > 0 and orm.iterative.every_steps == 1 and orm.iterative.replay_ratio == 0.1
    prm = load_config(str(ROOT / "configs/tiny_prm.yaml"), [f"data.train_file={SHARED_DATA / 'gsm8k/train.jsonl'}"])
    assert prm.reward.prm_weight > 0 and prm.algorithm.supervision == "process"


@pytest.mark.parametrize("override, field", [
    (["eval.every_steps=-1"], "eval.every_steps"),
    (["eval.samples=-2"], "eval.samples"),
    (["data.task=gsm8k", f"data.train_file={SHARED_DATA / 'gsm8k/train.jsonl'}", "eval.every_steps=5"], "eval.every_steps"),
])
def test_eval_fields_validated(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, override)


def test_learner_ranks_must_split_the_step_into_whole_groups():
    """Each rank trains whole groups, the same number, in whole micro-batches: one line names the fields."""
    base = ["data.questions_per_step=6", "rollout.group_size=4", "learner.micro_batch_size=4"]
    assert load_config(None, base + ["learner.num_ranks=3"]).learner.num_ranks == 3
    with pytest.raises(ConfigError, match=r"learner\.num_ranks=4 must divide data\.questions_per_step=6: each rank "
                                          r"trains whole groups") as e:
        load_config(None, base + ["learner.num_ranks=4"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"learner\.micro_batch_size=8 must divide each rank's share of the step's "
                                          r"batch of data\.questions_per_step\*rollout\.group_size/learner\.num_ranks=12"):
        load_config(None, base + ["learner.num_ranks=2", "learner.micro_batch_size=8"])
