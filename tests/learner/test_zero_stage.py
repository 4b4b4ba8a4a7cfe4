"""learner.zero_stage: None picks ZeRO-0 for one rank (nothing to partition) and ZeRO-2 for several."""
import pytest

from learner.trainer import deepspeed_config, resolve_zero_stage
from orchestrator.config import ConfigError, load_config


@pytest.mark.parametrize("setting, world, stage", [(None, 1, 0), (None, 2, 2), (None, 4, 2), (2, 1, 2), (3, 1, 3), (0, 4, 0)])
def test_resolve_zero_stage(setting, world, stage):
    assert resolve_zero_stage(setting, world) == stage


def test_deepspeed_config_carries_the_stage():
    one = deepspeed_config(1.0, micro_batch_size=8, grad_accum=4, world_size=1, bf16=True, zero_stage=0)
    two = deepspeed_config(0.5, micro_batch_size=8, grad_accum=2, world_size=2, bf16=False, zero_stage=2)
    assert one["zero_optimization"] == {"stage": 0} and two["zero_optimization"] == {"stage": 2}
    assert one["train_batch_size"] == 32 == two["train_batch_size"] and one["bf16"] == {"enabled": True}
    assert one["gradient_clipping"] == 1.0 and two["gradient_clipping"] == 0.5


def test_zero_stage_config_values():
    assert load_config(None, []).learner.zero_stage is None
    assert load_config(None, ["learner.zero_stage=3"]).learner.zero_stage == 3
    assert load_config(None, ["learner.zero_stage=null"]).learner.zero_stage is None
    with pytest.raises(ConfigError, match="learner.zero_stage"):
        load_config(None, ["learner.zero_stage=5"])
    assert load_config(None, ["learner.shared_prompt=false"]).learner.shared_prompt is False
    assert load_config(None, []).learner.shared_prompt is None
