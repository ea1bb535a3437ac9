"""KV caches for decoding N rows over one shared batch-1 prefix (staged search candidates, judge
prompts with a common head), and the helpers that fork or extend a batch-1 cache.

`RowCache` lets rows leave the batch; `PackedRowCache` decodes one token per row and step.
"""
from __future__ import annotations

import copy
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from models.kv_cache import KVCache, SharedPrefixKVCache


class RowCache(SharedPrefixKVCache):
    """`SharedPrefixKVCache` whose rows can leave the batch (finished candidates stop costing compute)."""

    def select(self, rows: Sequence[int]) -> "RowCache":
        out = RowCache(self.prefix, len(rows))
        out.suffix = self.suffix.select(list(rows))
        return out

    def attend(self, layer_id: int, q, k, v, mask: Optional[torch.Tensor] = None):
        """Rows attend over the shared prefix and their own tokens (one softmax over both, as the parent).

        mask (optional, [n|1, 1, q, P + T], >0 = may attend): which prefix and own positions each new token
        sees, for rows whose own tokens are left-padded (`generate_ragged`); None = causal.
        """
        if q.shape[2] > 1 and mask is None:
            return super().attend(layer_id, q, k, v, mask)
        n, h, sq, d = q.shape
        ks, vs = self.suffix.append(layer_id, k, v)  # [n, h, T, d]
        kp, vp = self.prefix.keys[layer_id], self.prefix.values[layer_id]  # [1, h, P, d]
        acc = torch.promote_types(q.dtype, torch.float32)
        rows = q.permute(1, 0, 2, 3).reshape(1, h, n * sq, d)  # the rows' queries against the one prefix
        s_prefix = (rows @ kp.transpose(-1, -2)).to(acc).reshape(h, n, sq, -1).permute(1, 0, 2, 3)  # [n, h, sq, P]
        s_own = (q @ ks.transpose(-1, -2)).to(acc)  # [n, h, sq, T]
        scores = torch.cat((s_prefix, s_own), dim=-1) * d ** -0.5
        if mask is not None:
            scores = scores.masked_fill(~(mask > 0), float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(q.dtype)
        p_prefix, p_own = probs.split([kp.shape[2], ks.shape[2]], dim=-1)
        p_prefix = p_prefix.permute(1, 0, 2, 3).reshape(1, h, n * sq, -1)
        out = (p_prefix @ vp).reshape(h, n, sq, d).permute(1, 0, 2, 3)  # [n, h, sq, d]
        return out + p_own @ vs

    def row_kv(self, row: int, length: int) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
        """Row `row`'s own keys/values of its first `length` tokens (copies, so the batch can be freed)."""
        return {i: (self.suffix.keys[i][row:row + 1, :, :length].clone(),
                    self.suffix.values[i][row:row + 1, :, :length].clone()) for i in self.suffix.keys}


class PackedRowCache:
    """N rows over a shared prefix, decoded one token per step, with one SDPA call per layer and step.

    Per layer one buffer holds the prefix once and then the rows' own tokens interleaved step-major
    (row r's s-th token at position P + s*N + r), so the keys of a step are a view of the buffer and a
    row mask keeps each row to the prefix and its own tokens. Memory: P + N x capacity positions, the
    prefix is never copied per row. Finished rows leave the batch (`select`) and their slots go unseen.
    """

    def __init__(self, prefix: KVCache, num_rows: int, capacity: int):
        if prefix.batch_size != 1:
            raise ValueError(f"the shared prefix must have batch size 1, got {prefix.batch_size}")
        self.prefix, self.num_rows, self.capacity = prefix, num_rows, capacity
        self.prefix_len = prefix.seq_len
        self.buffers: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.filled: Dict[int, int] = {}  # layer -> steps written (shared with `select` copies)
        self.row_ids = torch.arange(num_rows)  # original row of each row still in the batch
        self._masks: Dict[Tuple[int, int], torch.Tensor] = {}

    @property
    def batch_size(self) -> int:
        return len(self.row_ids)

    @property
    def seq_len(self) -> int:
        return self.prefix_len + max(self.filled.values(), default=0) * self.num_rows

    def nbytes(self) -> int:
        """Bytes of the positions in use (prefix once + every row's own tokens so far)."""
        if not self.buffers:
            return self.prefix.nbytes()
        k = next(iter(self.buffers.values()))[0]
        per_position = k.shape[1] * k.shape[3] * k.element_size() * 2 * len(self.buffers)
        return self.seq_len * per_position

    def _buffer(self, layer_id: int):
        if layer_id not in self.buffers:
            kp, vp = self.prefix.keys[layer_id], self.prefix.values[layer_id]  # [1, h, P, d]
            shape = (1, kp.shape[1], self.prefix_len + self.num_rows * self.capacity, kp.shape[3])
            bk, bv = kp.new_zeros(shape), vp.new_zeros(shape)  # unwritten slots must not be NaN (0 x NaN)
            bk[:, :, :self.prefix_len], bv[:, :, :self.prefix_len] = kp, vp
            self.buffers[layer_id] = (bk, bv)
        return self.buffers[layer_id]

    def _row_mask(self, step: int, device) -> torch.Tensor:
        """[1, 1, n_active, P + (step+1)*N] bool: the prefix, then each row's own slots only."""
        key = (step, len(self.row_ids))
        if key not in self._masks:
            own = torch.arange((step + 1) * self.num_rows, device=device) % self.num_rows
            rows = self.row_ids.to(device)
            mask = torch.ones(len(rows), self.prefix_len + len(own), dtype=torch.bool, device=device)
            mask[:, self.prefix_len:] = own[None, :] == rows[:, None]
            self._masks = {key: mask[None, None]}  # only the current step's mask is reused (by every layer)
        return self._masks[key]

    def attend(self, layer_id: int, q, k, v, mask: Optional[torch.Tensor] = None):
        """q/k/v [n_active, h, 1, d]: write this step's keys/values, attend over prefix + own tokens."""
        if mask is not None or q.shape[2] != 1:
            raise ValueError("PackedRowCache decodes one token per row and step, without an extra mask")
        step = self.filled.get(layer_id, 0)
        if step >= self.capacity:
            raise ValueError(f"PackedRowCache is full ({self.capacity} steps)")
        bk, bv = self._buffer(layer_id)
        slots = self.prefix_len + step * self.num_rows + self.row_ids.to(k.device)
        bk[0, :, slots] = k[:, :, 0].transpose(0, 1)  # [h, n_active, d]
        bv[0, :, slots] = v[:, :, 0].transpose(0, 1)
        self.filled[layer_id] = step + 1
        end = self.prefix_len + (step + 1) * self.num_rows
        rows_as_queries = q[:, :, 0].transpose(0, 1)[None]  # [1, h, n_active, d]
        out = F.scaled_dot_product_attention(rows_as_queries, bk[:, :, :end], bv[:, :, :end],
                                             attn_mask=self._row_mask(step, q.device))
        return out[0].transpose(0, 1)[:, :, None]  # [n_active, h, 1, d]

    def select(self, rows: Sequence[int]) -> "PackedRowCache":
        out = copy.copy(self)
        out.row_ids = self.row_ids[torch.as_tensor(list(rows), dtype=torch.long)]
        out._masks = {}
        return out

    def row_kv(self, row: int, length: int) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
        """Row `row` (of the active rows)'s own keys/values of its first `length` tokens, [1, h, length, d]."""
        original = int(self.row_ids[row])
        out = {}
        for i, (bk, bv) in self.buffers.items():
            slots = self.prefix_len + torch.arange(length, device=bk.device) * self.num_rows + original
            out[i] = (bk[:, :, slots], bv[:, :, slots])  # advanced indexing copies
        return out


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
