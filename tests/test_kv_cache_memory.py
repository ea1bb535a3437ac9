"""The shared-prefix cache's memory: its room grows geometrically (few allocations, at most twice what is
used, whatever the step cap), `nbytes()` is the storage really held, and the prefix is never copied."""
import math

import torch

from inference.caches import PackedRowCache, RowCache
from models.kv_cache import KVCache, SharedPrefixKVCache


def _storages(tensors):
    """{storage pointer: bytes} of the distinct storages behind `tensors`."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def _prefix(model, image_batch, vocab):
    inputs = image_batch(torch.randint(3, vocab, (1, 4)))
    prefix = KVCache()
    with torch.no_grad():
        model(**dict(inputs, attention_mask=None), kv_cache=prefix)
    return prefix, inputs["input_ids"].shape[1]


def test_room_grows_geometrically_and_nbytes_is_the_real_storage(tiny_model, tiny_config, image_batch):
    prefix, n = _prefix(tiny_model, image_batch, tiny_config.vocab_size)
    prefix_tensors = [*prefix.keys.values(), *prefix.values.values()]
    rows, steps = 4, 20
    position_bytes = 2 * tiny_config.hidden_size * 4 * tiny_config.num_layers  # keys + values, float32
    for initial in (1, 16):
        cache = PackedRowCache(prefix, rows, capacity=256, initial_steps=initial)  # a cap far above the use
        seen = {layer: set() for layer in range(tiny_config.num_layers)}
        with torch.no_grad():
            for t in range(steps):
                ids = torch.randint(3, tiny_config.vocab_size, (rows, 1))
                tiny_model(input_ids=ids, position_ids=torch.full((rows, 1), n + t), kv_cache=cache)
                for layer, (k, v) in cache.buffers.items():
                    seen[layer].add(k.untyped_storage().data_ptr())
                held = _storages([t for kv in cache.buffers.values() for t in kv] + prefix_tensors)
                assert cache.nbytes() == sum(held.values())  # reported = really allocated
        assert cache.seq_len == prefix.seq_len + steps
        for layer, pointers in seen.items():  # doubling from `initial` to >= 20 steps
            assert len(pointers) <= 1 + math.ceil(math.log2(steps / initial)), (initial, layer, len(pointers))
        # at most twice the rows' tokens, plus the prefix held once (not once per row, not copied)
        assert cache.nbytes() <= (prefix.seq_len + rows * max(2 * steps, initial)) * position_bytes
        assert _storages(prefix_tensors).keys().isdisjoint(_storages([t for kv in cache.buffers.values()
                                                                      for t in kv]))


def test_plain_cache_holds_only_its_keys_and_values(tiny_model, tiny_config, image_batch):
    """The prefill's values are views of the fused q/k/v output; the cache keeps its own copy, not all three."""
    prefix, n = _prefix(tiny_model, image_batch, tiny_config.vocab_size)
    expected = tiny_config.num_layers * 2 * n * tiny_config.hidden_size * 4  # keys + values, float32
    held = _storages([*prefix.keys.values(), *prefix.values.values()])
    assert sum(held.values()) == expected and prefix.nbytes() == expected


def test_one_attention_serves_every_shared_prefix_cache():
    """RowCache and PackedRowCache are the models/kv_cache implementation, not copies of it."""
    for cls in (RowCache, PackedRowCache):
        assert issubclass(cls, SharedPrefixKVCache)
        assert cls.attend is SharedPrefixKVCache.attend and cls.select is SharedPrefixKVCache.select


def test_rows_leaving_keep_the_others_exact(tiny_model, tiny_config, image_batch):
    """After select() compacts the buffers in place, the rows left decode exactly as before it."""
    prefix, n = _prefix(tiny_model, image_batch, tiny_config.vocab_size)
    cont = torch.randint(3, tiny_config.vocab_size, (3, 6))
    with torch.no_grad():
        full = SharedPrefixKVCache(prefix, 3, initial_steps=2)
        outs = torch.cat([tiny_model(input_ids=cont[:, t:t + 1], position_ids=torch.full((3, 1), n + t),
                                     kv_cache=full)[0] for t in range(6)], 1)
        part = SharedPrefixKVCache(prefix, 3, initial_steps=2)
        got = [tiny_model(input_ids=cont[:, t:t + 1], position_ids=torch.full((3, 1), n + t), kv_cache=part)[0]
               for t in range(3)]
        part = part.select([2, 0])  # row 1 leaves, and the order changes
        got = torch.cat(got, 1)[[2, 0]]
        later = torch.cat([tiny_model(input_ids=cont[[2, 0], t:t + 1], position_ids=torch.full((2, 1), n + t),
                                      kv_cache=part)[0] for t in range(3, 6)], 1)
    assert torch.allclose(torch.cat([got, later], 1), outs[[2, 0]], atol=1e-5)
    assert part.batch_size == 2 and part.seq_len == prefix.seq_len + 6
