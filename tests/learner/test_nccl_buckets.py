"""The GPU sync path's bucket size reaches both ends of vLLM's packed NCCL transfer. No GPU here: the
NCCL endpoint and the engine-side call are stand-ins; what is checked is what they are handed."""
import torch

from learner.weight_sync import NcclWeightSender


def test_bucket_size_is_handed_to_the_sender_and_to_the_engine_workers(monkeypatch):
    from vllm.distributed.weight_transfer import clients, nccl_engine

    payloads = []
    monkeypatch.setattr(nccl_engine, "open_trainer_endpoint", lambda info: "endpoint")
    monkeypatch.setattr(clients.RayVLLMWeightSyncClient, "init_weight_transfer_engine",
                        lambda self, payload: payloads.append(payload))
    sender = NcclWeightSender(torch.nn.Linear(4, 4), torch.bfloat16, bucket_mb=64)
    sender.add("engine-0", handle=object(), tp=2)
    engine = sender.senders["engine-0"]
    assert engine.packed and engine.packed_buffer_size_bytes == 64 * 2**20 and engine.packed_num_buffers == 2
    assert engine.model_update_group == "endpoint"
    (payload,) = payloads  # what the engine's workers are told: the same geometry, ranks after the learner
    assert payload["packed"] is True and payload["packed_buffer_size_bytes"] == 64 * 2**20
    assert payload["packed_num_buffers"] == 2 and payload["world_size"] == 3 and payload["rank_offset"] == 1


def test_a_send_declares_and_streams_every_weight_tied_ones_under_both_names(monkeypatch):
    """What the engine's workers size their buffers from (the update info) matches what is packed into
    buckets, element for element: vLLM checks the two against each other and fails on any difference."""
    from vllm.distributed.weight_transfer import clients, nccl_engine

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    calls, streamed = [], []
    monkeypatch.setattr(nccl_engine, "open_trainer_endpoint", lambda info: "endpoint")
    for method in ("init_weight_transfer_engine", "start_weight_update", "update_weights", "finish_weight_update"):
        monkeypatch.setattr(clients.RayVLLMWeightSyncClient, method,
                            lambda self, *args, _m=method: calls.append((_m, *args)))

    def producer(iterator, group, src, post_iter_func, buffer_size_bytes, num_buffers):
        streamed.extend((name, post_iter_func((name, t))) for name, t in iterator)
        calls.append(("broadcast", buffer_size_bytes))

    monkeypatch.setattr(nccl_engine, "packed_nccl_broadcast_producer", producer)
    sender = NcclWeightSender(Tied(), torch.bfloat16, bucket_mb=1)
    sender.add("engine-0", handle=object(), tp=1)
    engine = sender.senders["engine-0"]
    monkeypatch.setattr(engine, "_post_send_sync", lambda: None)  # a CUDA wait
    engine.send_weights()
    update = next(c[1] for c in calls if c[0] == "update_weights")
    assert update["names"] == ["embed.weight", "head.weight"] and update["dtype_names"] == ["bfloat16"] * 2
    assert [name for name, _ in streamed] == update["names"]
    assert all(t.dtype == torch.bfloat16 and t.shape == (10, 4) for _, t in streamed)
    assert torch.equal(streamed[0][1], streamed[1][1])
    order = [c[0] for c in calls]  # the workers' receive runs beside the broadcast, in a thread: either order
    assert order[:2] == ["init_weight_transfer_engine", "start_weight_update"] and order[-1] == "finish_weight_update"
    assert sorted(order[2:4]) == ["broadcast", "update_weights"]
    assert ("broadcast", 2**20) in calls
