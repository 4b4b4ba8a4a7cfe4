"""Reference logprobs computed chunk by chunk during generation equal the ones the update would compute
itself, rows are matched by their tokens, and a reference reset makes every cached row stale."""
import torch

from learner.batching import collate
from learner.reference_cache import ReferenceCache
from learner.logprobs import batch_logprobs
from tests.learner.test_micro_batch_invariance import _episodes, _tiny_model


def _compute(model):
    calls = []

    def compute(batch):
        calls.append(len(batch))
        with torch.no_grad():
            return batch_logprobs(model, batch, temperature=1.0)

    return compute, calls


def _setup():
    """8 episodes, their batch, a counting compute over a tiny model, the batch's logprobs computed at once."""
    episodes = _episodes(n=8)
    batch = collate(episodes)
    compute, calls = _compute(_tiny_model().eval())
    expected = compute(batch) * batch.response_mask
    calls.clear()
    return episodes, batch, compute, calls, expected


def test_chunks_computed_ahead_equal_the_whole_batch_computed_at_once():
    episodes, batch, compute, calls, expected = _setup()
    cache = ReferenceCache()
    for chunk in (episodes[5:], episodes[:2], episodes[2:5]):  # arrival order is not batch order
        part = collate(chunk)
        cache.store(part, compute(part), version=0)
    calls.clear()
    got, found = cache.take(batch, 0, compute)
    assert found == 8 and calls == []  # nothing recomputed
    # each chunk is padded to its own width: the same values up to float rounding
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert got[batch.response_mask == 0].abs().max() == 0
    assert len(cache) == 0  # entries serve one step


def test_missing_rows_are_computed_and_placed_at_their_positions():
    episodes, batch, compute, calls, expected = _setup()
    cache = ReferenceCache()
    part = collate(episodes[1:4])
    cache.store(part, compute(part), version=0)
    calls.clear()
    got, found = cache.take(batch, 0, compute)
    assert found == 3 and calls == [5]  # one pass over the 5 rows not cached
    assert torch.allclose(got, expected, atol=1e-5)


def test_identical_samples_share_an_entry_and_another_version_finds_nothing():
    model = _tiny_model().eval()
    episodes = _episodes(n=4)
    twice = [episodes[0], episodes[0], episodes[1], episodes[1]]  # a group with repeated answers
    compute, calls = _compute(model)
    cache = ReferenceCache()
    part = collate(episodes[:2])
    cache.store(part, compute(part), version=3)
    assert len(cache) == 2
    calls.clear()
    got, found = cache.take(collate(twice), 3, compute)
    assert found == 4 and calls == []
    assert torch.equal(got[0], got[1]) and torch.equal(got[2], got[3])
    cache.store(part, compute(part), version=3)
    calls.clear()
    _, found = cache.take(collate(twice), 4, compute)  # the reference was reset since: all stale
    assert found == 0 and calls == [4]
    # a store under a newer version drops what an older one left
    cache.store(collate(episodes[:1]), compute(collate(episodes[:1])), version=4)
    cache.store(collate(episodes[1:2]), compute(collate(episodes[1:2])), version=5)
    assert len(cache) == 1
