"""The rollout pool's elasticity with stand-in engines (real Ray actors, no vLLM): work of a dead
engine is redone on the survivors, replacements and scale-ups get the current weights before they
generate, the restart budget is enforced."""
import os
import time

import pytest
import ray

import rollout.group as group_module
from orchestrator.config import load_config
from orchestrator.types import Problem
from rollout.engine import SamplingSpec
from rollout.group import RolloutError, RolloutGroup
from tests.fakes.actors import FakeEngine


@pytest.fixture
def pool(ray_local, monkeypatch):
    monkeypatch.setattr(group_module, "RolloutEngine", FakeEngine)
    cfg = load_config("configs/tiny_cpu.yaml", ["rollout.num_workers=3", "rollout.num_cpus_per_worker=0.5",
                                                "rollout.group_size=2", "rollout.max_restarts=1",
                                                "resources.timeout_s=60"])
    g = RolloutGroup(cfg, max_model_len=64)
    g.ready()
    yield g
    g.shutdown()
    left = [f for f in os.listdir("/dev/shm") if f.startswith("fake-engine-shm-")]
    assert not left, f"fake engines' shared memory left after the pool's shutdown: {left}"


def _problems(n):
    return [Problem(uid=f"q{i}", question=f"{i}+0", gold=str(i), task="arithmetic") for i in range(n)], [[i + 1] for i in range(n)]


def _kill(g, name):
    """Kill an engine and wait until Ray reports it dead (ray.kill is asynchronous)."""
    handle = g.engines[name]
    ray.kill(handle, no_restart=True)
    with pytest.raises(ray.exceptions.RayActorError):
        for _ in range(100):
            ray.get(handle.ping.remote(), timeout=10)
            time.sleep(0.1)


def _shm_files(pool):
    return {n: ray.get(h.helper_processes.remote())[2][0] for n, h in pool.engines.items()}


def test_dead_engine_work_is_redone_on_the_survivors_in_order(pool):
    problems, ids = _problems(7)
    shm = _shm_files(pool)
    assert all(os.path.exists(f"/dev/shm/{f}") for f in shm.values())
    _kill(pool, "rollout-engine-1")
    episodes, stats = pool.generate(problems, ids)
    assert not os.path.exists(f"/dev/shm/{shm['rollout-engine-1']}")  # the dead engine's shared memory: removed
    assert os.path.exists(f"/dev/shm/{shm['rollout-engine-0']}")
    assert [e.group_id for e in episodes] == [g for g in range(7) for _ in range(2)]
    assert [e.problem.uid for e in episodes[::2]] == [p.uid for p in problems]
    assert "rollout-engine-1" not in {e.response_text for e in episodes}
    assert stats["rollout/engines_lost"] == 1 and stats["rollout/num_engines"] == 2
    assert pool.names == ["rollout-engine-0", "rollout-engine-2"]


def test_replacement_gets_current_weights_before_it_generates_and_budget_is_enforced(pool):
    loaded = []

    def load(new):  # what the driver does: sync the current policy into the new engines only
        loaded.append(sorted(new))
        pool.sync_weights_blob(ray.put(b"weights"), 5, list(new))

    _kill(pool, "rollout-engine-0")
    pool.generate(*_problems(3))
    assert pool.heal(load) == ["rollout-engine-3"] and loaded == [["rollout-engine-3"]]
    assert pool.policy_versions(["rollout-engine-3"]) == {"rollout-engine-3": 5}
    assert pool.restarts_left == 0
    _kill(pool, "rollout-engine-2")
    pool.generate(*_problems(3))
    with pytest.raises(RolloutError, match="rollout-engine-2 died and rollout.max_restarts=1 replacements are used up"):
        pool.heal(load)


def test_scale_up_and_down_between_steps(pool):
    pool.scale_to(1)
    assert pool.names == ["rollout-engine-0"]
    assert pool.heal(lambda new: None) == []
    pool.scale_to(2)
    assert pool.heal(lambda new: pool.sync_weights_blob(ray.put(b"w"), 2, list(new))) == ["rollout-engine-3"]
    assert pool.restarts_left == 1  # a scale-up is not a restart
    texts = pool.generate_text([[1], [2, 2], [3, 3, 3]], SamplingSpec(n=1, max_new_tokens=4))
    assert [t[0].split(":")[1] for t in texts] == ["1", "2", "3"]  # answers in prompt order
    with pytest.raises(RolloutError, match=">= 1"):
        pool.scale_to(0)


def test_no_engine_left_is_an_error_naming_them(pool):
    for name in pool.names:
        _kill(pool, name)
    with pytest.raises(RolloutError, match="no rollout engine is left"):
        pool.generate(*_problems(2))


def test_streamed_chunks_reach_the_caller_and_a_dead_engine_redoes_only_what_it_had_not_delivered(pool):
    problems, ids = _problems(9)  # 3 engines x 3 groups of 2 samples, chunks of 3 samples
    ray.get(pool.engines["rollout-engine-1"].die_after_chunks.remote(1))
    chunks = []
    episodes, stats = pool.generate(problems, ids, on_chunk=chunks.append, chunk_samples=3)
    assert [e.group_id for e in episodes] == [g for g in range(9) for _ in range(2)]
    assert [e.problem.uid for e in episodes[::2]] == [p.uid for p in problems]
    # every sample reached the caller exactly once, in chunks of at most 3
    assert sorted(e.group_id for chunk in chunks for e in chunk) == [g for g in range(9) for _ in range(2)]
    assert all(1 <= len(chunk) <= 3 for chunk in chunks)
    # engine 1 held groups 3-5: it delivered at most its first chunk (group 3 and half of group 4) before
    # dying; only the samples it had not delivered were drawn again, so group 4 may mix two engines
    from_dead = [e.group_id for e in episodes if e.response_text == "rollout-engine-1"]
    assert from_dead in ([], [3, 3, 4])
    assert stats["rollout/engines_lost"] == 1 and "rollout-engine-1" not in pool.names
    assert sum(v for k, v in stats.items() if k.endswith("/sequences")) == 18


def test_streaming_without_a_live_engine_names_the_dead(pool):
    for name in pool.names:
        _kill(pool, name)
    with pytest.raises(RolloutError, match="no rollout engine is left"):
        pool.generate(*_problems(2), on_chunk=lambda chunk: None, chunk_samples=1)


def test_an_engine_that_dies_before_a_weight_sync_is_left_out_of_it(pool):
    """Engines' nodes are noted when they start, so a sync needs no call to a dead engine to place it;
    one whose node is still unknown and that died is dropped (the pool heals before the next step)."""
    node = ray.get_runtime_context().get_node_id()
    assert pool.node_ids(pool.names) == {n: node for n in pool.names}  # from ready(), no call
    _kill(pool, "rollout-engine-1")
    del pool._nodes["rollout-engine-1"], pool._nodes["rollout-engine-2"]  # as for an engine never located
    assert pool.node_ids(pool.names) == {"rollout-engine-0": node, "rollout-engine-2": node}
    assert pool.names == ["rollout-engine-0", "rollout-engine-2"] and pool.lost == ["rollout-engine-1"]
    pool.sync_weights_blob(ray.put(b"w"), 3, ["rollout-engine-0", "rollout-engine-2"])
    assert pool.policy_versions() == {"rollout-engine-0": 3, "rollout-engine-2": 3}
    _kill(pool, "rollout-engine-2")  # after the sync, before the version check
    assert pool.policy_versions() == {"rollout-engine-0": 3} and pool.names == ["rollout-engine-0"]
    assert pool.lost == ["rollout-engine-1", "rollout-engine-2"]
    _kill(pool, "rollout-engine-0")
    pool._nodes.clear()
    with pytest.raises(RolloutError, match="locating engines: no rollout engine is left"):
        pool.node_ids(pool.names)


def test_an_engine_too_busy_to_shut_down_is_killed_and_its_shared_memory_removed(pool):
    """A stop signal during generation: the pool's shutdown cannot wait for the engine's stream, so the
    engine is killed after its shutdown deadline, and its vLLM leftovers are cleaned up all the same."""
    shm = _shm_files(pool)
    busy = pool.engines["rollout-engine-0"]
    ray.get(busy.busy.remote(60.0), timeout=30)
    busy.generate.remote([(0, _problems(1)[0][0], (1,))], SamplingSpec(n=1, max_new_tokens=2))  # in flight
    time.sleep(1.0)
    pool.shutdown()
    assert not [f for f in shm.values() if os.path.exists(f"/dev/shm/{f}")]
