"""The KV caches decoding uses: N rows over one shared batch-1 prefix (staged-search candidates, judge
prompts with a common head), both `models.kv_cache.SharedPrefixKVCache`, and the helpers that fork or
extend a batch-1 cache.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from models.kv_cache import KVCache, SharedPrefixKVCache


class RowCache(SharedPrefixKVCache):
    """N rows over a shared prefix that may leave the batch, fed several tokens at once with the caller's
    mask over [prefix | own tokens] (left-padded judge prompts, `generate_ragged`). The attention is
    `SharedPrefixKVCache`'s, the one implementation."""


class PackedRowCache(SharedPrefixKVCache):
    """N staged-search candidates over a shared prefix, one token per row and step, at most `capacity`
    steps; the room grows geometrically up to that (`SharedPrefixKVCache`, the one implementation)."""

    def __init__(self, prefix: KVCache, num_rows: int, capacity: int, initial_steps: int = 16):
        super().__init__(prefix, num_rows, max_steps=capacity, initial_steps=initial_steps)
        self.capacity = capacity


def fork(cache: KVCache) -> KVCache:
    """A cache sharing `cache`'s tensors; appending to it leaves `cache` unchanged (appends concatenate)."""
    return cache.map(lambda t: t)


def extend_cache(cache: KVCache, own: Optional[Dict[int, Tuple[torch.Tensor, torch.Tensor]]]) -> KVCache:
    """Batch-1 `cache` followed by a row's own keys/values (the committed winner of a search step)."""
    if not own or next(iter(own.values()))[0].shape[2] == 0:
        return fork(cache)
    out = KVCache()
    for i in cache.keys:
        k, v = own[i]
        out.keys[i] = torch.cat((cache.keys[i], k), dim=2)
        out.values[i] = torch.cat((cache.values[i], v), dim=2)
    return out
