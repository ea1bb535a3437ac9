"""Key/value caches for incremental decoding. The model's attention hands each layer's new keys and
values to `cache.attend`, which stores them and attends over everything cached so far.

`KVCache` is the plain per-row cache. `SharedPrefixKVCache` serves N rows that continue one common
prefix: the prefix is stored once (batch 1) and each row only keeps its own new tokens, so memory grows
with N x new tokens, not N x prefix.
"""
from typing import Dict, Optional

import torch

from .attention import offset_causal_mask, sdpa


class KVCache:
    """Per-layer keys/values [b, heads, s, d] of all positions run so far."""

    def __init__(self):
        self.keys: Dict[int, torch.Tensor] = {}
        self.values: Dict[int, torch.Tensor] = {}

    @property
    def seq_len(self) -> int:
        return next(iter(self.keys.values())).shape[2] if self.keys else 0

    @property
    def batch_size(self) -> int:
        return next(iter(self.keys.values())).shape[0] if self.keys else 0

    def append(self, layer_id: int, k: torch.Tensor, v: torch.Tensor):
        if layer_id in self.keys:
            k = torch.cat((self.keys[layer_id], k), dim=2)
            v = torch.cat((self.values[layer_id], v), dim=2)
        self.keys[layer_id], self.values[layer_id] = k, v
        return k, v

    def attend(self, layer_id: int, q, k, v, mask: Optional[torch.Tensor] = None):
        """New queries see every cached position and, causally, each other (or `mask` over all keys)."""
        k, v = self.append(layer_id, k, v)
        return sdpa(q, k, v, mask) if mask is not None else sdpa(q, k, v, causal=True)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.keys, self.values) for t in d.values())

    def map(self, fn) -> "KVCache":
        out = KVCache()
        out.keys = {i: fn(t) for i, t in self.keys.items()}
        out.values = {i: fn(t) for i, t in self.values.items()}
        return out

    def select(self, rows) -> "KVCache":
        """Keep batch rows `rows` (an index list or tensor), e.g. the surviving beams."""
        index = torch.as_tensor(rows, dtype=torch.long)
        return self.map(lambda t: t.index_select(0, index.to(t.device)))

    def expand(self, n: int) -> "KVCache":
        """Repeat a batch-1 cache into n independent rows (copies: each row may then diverge)."""
        return self.map(lambda t: t.expand(n, *t.shape[1:]).contiguous())

    def truncate(self, length: int) -> "KVCache":
        return self.map(lambda t: t[:, :, :length])

    def clone(self) -> "KVCache":
        return self.map(lambda t: t.clone())


class SharedPrefixKVCache:
    """N rows continuing one shared prefix. The prefix cache (batch 1) is read-only and never copied per row.

    Attention is split in two and merged exactly: scores against the prefix are computed with the N rows
    folded into the query axis (one [1, h, N*q, P] product, no N-fold copy of prefix keys), scores against
    each row's own tokens per row; one softmax runs over both.
    """

    def __init__(self, prefix: KVCache, num_rows: int):
        if prefix.batch_size != 1:
            raise ValueError(f"the shared prefix must have batch size 1, got {prefix.batch_size}")
        self.prefix = prefix
        self.num_rows = num_rows
        self.suffix = KVCache()

    @property
    def seq_len(self) -> int:
        return self.prefix.seq_len + self.suffix.seq_len

    @property
    def batch_size(self) -> int:
        return self.num_rows

    def nbytes(self) -> int:
        return self.prefix.nbytes() + self.suffix.nbytes()

    def attend(self, layer_id: int, q, k, v, mask: Optional[torch.Tensor] = None):
        if mask is not None and not bool((mask > 0).all()):
            raise ValueError("SharedPrefixKVCache supports causal attention only")
        n, h, sq, d = q.shape
        ks, vs = self.suffix.append(layer_id, k, v)  # [n, h, T, d], T includes the new tokens
        kp, vp = self.prefix.keys[layer_id], self.prefix.values[layer_id]  # [1, h, P, d]
        scale = d ** -0.5
        acc = torch.promote_types(q.dtype, torch.float32)  # softmax in float32 at least (float64 stays float64)
        q_folded = q.permute(1, 0, 2, 3).reshape(1, h, n * sq, d)  # rows folded into the query axis
        scores_p = (q_folded @ kp.transpose(-1, -2)).to(acc) * scale  # [1, h, n*sq, P]
        scores_p = scores_p.reshape(h, n, sq, -1).permute(1, 0, 2, 3)  # [n, h, sq, P]
        scores_s = (q @ ks.transpose(-1, -2)).to(acc) * scale  # [n, h, sq, T]
        if sq > 1:
            scores_s = scores_s.masked_fill(~offset_causal_mask(sq, ks.shape[2], q.device), float("-inf"))
        probs = torch.softmax(torch.cat((scores_p, scores_s), dim=-1), dim=-1).to(q.dtype)
        probs_p, probs_s = probs.split([kp.shape[2], ks.shape[2]], dim=-1)
        probs_p = probs_p.permute(1, 0, 2, 3).reshape(1, h, n * sq, -1)  # fold rows again
        out_p = (probs_p @ vp).reshape(h, n, sq, d).permute(1, 0, 2, 3)  # [n, h, sq, d]
        return out_p + probs_s @ vs

    def commit(self, row: int, length: Optional[int] = None) -> KVCache:
        """A batch-1 cache of prefix + row `row`'s first `length` own tokens (the chosen continuation)."""
        out = KVCache()
        for i in self.prefix.keys:
            sk, sv = self.suffix.keys.get(i), self.suffix.values.get(i)
            if sk is None:
                out.keys[i], out.values[i] = self.prefix.keys[i], self.prefix.values[i]
                continue
            sk, sv = sk[row:row + 1, :, :length], sv[row:row + 1, :, :length]
            out.keys[i] = torch.cat((self.prefix.keys[i], sk), dim=2)
            out.values[i] = torch.cat((self.prefix.values[i], sv), dim=2)
        return out
