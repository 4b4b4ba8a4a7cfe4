"""Reward models score in the configured dtype: bf16 gives the fp32 scores to bf16 precision."""
import pytest
import torch

from orchestrator.config import ConfigError, load_config
from orchestrator.types import Problem
from reward.pool import reward_model_dtype


@pytest.mark.parametrize("overrides, expected", [
    ([], "float32"),  # CPU default
    (["model.dtype=bfloat16"], "bfloat16"),  # follows the policy
    (["model.dtype=bfloat16", "reward.model_dtype=float32"], "float32"),
    (["reward.model_dtype=bfloat16"], "bfloat16"),
])
def test_reward_model_dtype_follows_the_policy_unless_set(overrides, expected):
    assert reward_model_dtype(load_config(None, overrides)) == expected


def test_bad_reward_model_dtype_is_named():
    with pytest.raises(ConfigError, match=r"reward\.model_dtype"):
        load_config(None, ["reward.model_dtype=fp8"])


def test_bf16_reward_model_scores_like_fp32(tiny_model, tmp_path):
    from reward.model import RewardModel, load_backbone, save_reward_model

    torch.manual_seed(0)
    model, tok = load_backbone(tiny_model, "orm")
    path = save_reward_model(model, tok, str(tmp_path / "orm"))
    requests = [(Problem(uid=f"q{a}", question=f"What is {a} + 2?", gold=str(a + 2), task="arithmetic"),
                 (f"The answer is {a + 2 - a % 2}.",)) for a in range(4)]
    full = RewardModel(path, "orm", batch_size=2).score(requests)
    half = RewardModel(path, "orm", batch_size=2, dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    scores = half.score(requests)
    assert all(isinstance(s[0], float) for s in scores)
    # bf16 keeps ~3 significant digits; the probabilities agree to a few hundredths
    assert [s[0] for s in scores] == pytest.approx([f[0] for f in full], abs=0.03)
