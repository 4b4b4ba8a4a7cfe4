"""The record of the engines' shared memory in output.dir, and its sweep at the next start: what a killed
driver's engines leave in /dev/shm (vLLM's queues, 400 MiB an engine) is removed; nothing else is."""
import json
import os

import ray

from rollout import engine_shm


def _touch(name):
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(b"\0" * 64)


def test_recorded_files_left_by_an_earlier_start_are_removed_on_their_node(tmp_path, monkeypatch):
    here = ray.util.get_node_ip_address()
    names = [f"grpo-test-shm-{os.getpid()}-{k}" for k in range(3)]
    engine_shm.remember(str(tmp_path), {"rollout-engine-0": (here, names[:2])})
    engine_shm.remember(str(tmp_path), {"rollout-engine-1": ("203.0.113.9", [names[2]]), "rollout-engine-2": (here, [])})
    record = json.loads((tmp_path / engine_shm.RECORD).read_text())
    assert record == {"rollout-engine-0": [here, names[:2]], "rollout-engine-1": ["203.0.113.9", [names[2]]]}
    monkeypatch.setattr(engine_shm, "node_ips", lambda: {})  # the other node is no longer in the cluster
    try:
        for name in names:
            _touch(name)
        _touch(f"grpo-test-shm-{os.getpid()}-unrecorded")
        assert engine_shm.sweep(str(tmp_path), 10.0) == names[:2]
        assert [os.path.exists(f"/dev/shm/{n}") for n in names] == [False, False, True]  # its node's: left
        assert os.path.exists(f"/dev/shm/grpo-test-shm-{os.getpid()}-unrecorded")  # not the run's: left alone
        assert not (tmp_path / engine_shm.RECORD).exists()
        assert engine_shm.sweep(str(tmp_path), 10.0) == []  # no record: nothing to do
    finally:
        for name in names + [f"grpo-test-shm-{os.getpid()}-unrecorded"]:
            if os.path.exists(f"/dev/shm/{name}"):
                os.unlink(f"/dev/shm/{name}")


def test_a_torn_or_odd_record_is_dropped_without_removing_anything(tmp_path):
    (tmp_path / engine_shm.RECORD).write_text('{"rollout-engine-0": ["1.2.3.4", ["psm_')
    assert engine_shm.sweep(str(tmp_path), 10.0) == [] and not (tmp_path / engine_shm.RECORD).exists()
    (tmp_path / engine_shm.RECORD).write_text(json.dumps({"a": "b", "c": [1, "x"], "d": [ray.util.get_node_ip_address(),
                                                                                          ["../../etc/passwd"]]}))
    assert engine_shm.sweep(str(tmp_path), 10.0) == [] and os.path.exists("/etc/passwd")
