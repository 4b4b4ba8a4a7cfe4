"""Shared fixtures: repository paths and the tiny model (built once, offline from a PyPI wheel)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"

os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from orchestrator.model_prep import prepare_tiny_model

    return prepare_tiny_model(str(TINY_MODEL))


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray of 4 logical CPUs for one test module (fake actors: no Ray logs on the terminal)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
