"""A real PolicyTrainer step (DeepSpeed, the tiny SmolLM2, fp32 on CPU) through the packed forward equals the
same step through the plain forward, and reports the gradient norm DeepSpeed does not keep under fp32 ZeRO-0."""
import random

import pytest
import torch

from learner.batching import collate
from orchestrator.types import Episode, Problem

pytestmark = pytest.mark.slow


def _batch(tokenizer, questions=2, group_size=4, seed=0):
    rng = random.Random(seed)
    episodes = []
    for q in range(questions):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        text = tokenizer.apply_chat_template([{"role": "user", "content": f"What is {a} + {b}?"}],
                                             add_generation_prompt=True, tokenize=False)
        prompt = tokenizer(text, add_special_tokens=False).input_ids
        for _ in range(group_size):
            response = tuple(rng.randrange(100, 20000) for _ in range(rng.randint(2, 12)))
            episodes.append(Episode(group_id=q, problem=Problem(f"u{q}", "q", "1", "arithmetic"),
                                    prompt_token_ids=tuple(prompt), response_token_ids=response,
                                    sampler_logprobs=tuple(-2.0 for _ in response), response_text="",
                                    finish_reason="stop", policy_version=0, reward=float(rng.random() < 0.5)))
    return collate(episodes, pad_token_id=tokenizer.pad_token_id or 0)


def test_packed_step_equals_plain_step(tiny_model):
    from learner.actor import _start_rank
    from learner.trainer import PolicyTrainer, accumulated_grad_norm
    from orchestrator.config import load_config

    _start_rank(0, 2)
    base = [f"model.path={tiny_model}", "model.dtype=float32", "data.questions_per_step=2", "rollout.group_size=4",
            "learner.micro_batch_size=4", "learner.lr=1e-5"]
    results = {}
    for name, extra in (("plain", ["learner.packed_sequences=false", "learner.shared_prompt=false"]), ("packed", [])):
        trainer = PolicyTrainer(load_config(None, base + extra), batch_size=8)
        assert not trainer.engine_reports_grad_norm  # fp32, ZeRO-0: DeepSpeed clips but keeps no norm
        grads, step = [], trainer.engine.step

        def step_keeping_grads(engine=trainer.engine, grads=grads, step=step):  # the gradient the optimizer gets
            if engine.is_gradient_accumulation_boundary():
                grads.append(torch.cat([p.grad.flatten() for p in engine.module.parameters()]))
            step()

        trainer.engine.step = step_keeping_grads
        metrics = trainer.train_step(_batch(trainer.tokenizer), 0, 4)
        results[name] = (metrics, grads[-1])
    (plain, g_plain), (packed, g_packed) = results["plain"], results["packed"]
    assert plain["learner/packed_frac"] == 0 and packed["learner/packed_frac"] == 1
    assert plain["loss/grad_norm"] > 0 and packed["loss/grad_norm"] == pytest.approx(plain["loss/grad_norm"], rel=1e-4)
    assert packed["loss/loss"] == pytest.approx(plain["loss/loss"], rel=1e-4, abs=1e-6)
    assert packed["loss/kl"] == pytest.approx(plain["loss/kl"], rel=1e-3, abs=1e-7)
    assert float(g_plain.double().norm()) == pytest.approx(plain["loss/grad_norm"], rel=1e-4)  # (fp32 norm of 135M drifts)
    assert torch.allclose(g_packed, g_plain, rtol=1e-3, atol=1e-6), (g_packed - g_plain).abs().max()
    model = torch.nn.Linear(2, 1, bias=False)
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    assert accumulated_grad_norm(model) == pytest.approx(5.0)


def test_gradient_checkpointing_really_checkpoints(tiny_model):
    """With learner.gradient_checkpointing the policy trains in training mode (transformers loads it in
    eval mode, where it never checkpoints), so the training passes keep only each decoder layer's input
    for backward: the activations autograd saves fall to a fraction. Loss and gradient norm are the same
    either way, and the first ratio at mu=1 is exactly 1."""
    from learner.actor import _start_rank
    from learner.trainer import PolicyTrainer, without_dropout
    from orchestrator.config import load_config

    _start_rank(0, 2)
    base = [f"model.path={tiny_model}", "model.dtype=float32", "data.questions_per_step=2", "rollout.group_size=4",
            "learner.micro_batch_size=4", "learner.lr=1e-5", "learner.packed_sequences=false",
            "learner.shared_prompt=false"]
    saved, metrics = {}, {}
    for flag in (False, True):
        trainer = PolicyTrainer(load_config(None, base + [f"learner.gradient_checkpointing={str(flag).lower()}"]),
                                batch_size=8)
        module = trainer.engine.module
        assert module.training and module.is_gradient_checkpointing == flag
        params = {p.data_ptr() for p in module.parameters()}
        activations = [0]

        def pack(t, activations=activations, params=params):
            if t.data_ptr() not in params:  # weights are saved either way
                activations[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            metrics[flag] = trainer.train_step(_batch(trainer.tokenizer), 0, 4)
        saved[flag] = activations[0]
    assert saved[True] < 0.25 * saved[False], saved
    assert metrics[True]["loss/ratio_mean"] == 1.0 and metrics[False]["loss/ratio_mean"] == 1.0
    assert metrics[True]["loss/loss"] == pytest.approx(metrics[False]["loss/loss"], rel=1e-5, abs=1e-7)
    assert metrics[True]["loss/grad_norm"] == pytest.approx(metrics[False]["loss/grad_norm"], rel=1e-4)

    class Config:
        def __init__(self):
            self.attention_dropout, self.resid_pdrop, self.hidden_size = 0.1, 0.2, 8

        def to_dict(self):
            return dict(vars(self))

    cleaned = without_dropout(Config())
    assert (cleaned.attention_dropout, cleaned.resid_pdrop, cleaned.hidden_size) == (0.0, 0.0, 8)
