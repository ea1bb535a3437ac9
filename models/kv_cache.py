"""Key/value caches for incremental decoding. The model's attention hands each layer's new keys and
values to `cache.attend`, which stores them and attends over everything cached so far.

`KVCache` is the plain per-row cache. `SharedPrefixKVCache` serves N rows that continue one common
prefix (staged-search candidates, judge prompts with a common head): the prefix is held once (batch 1)
and each row adds only its own new tokens, so memory grows with N x new tokens, not N x prefix.
`nbytes()` of both is the storage the cache really keeps alive.
"""
import copy
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
from .attention import offset_causal_mask, sdpa


def storage_nbytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors`: a view counts its whole storage, shared ones once."""
    sizes = {}
    for t in tensors:
        storage = t.untyped_storage()
        sizes[storage.data_ptr()] = storage.nbytes()
    return sum(sizes.values())


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    """`t`, copied when it is a view into a larger tensor (the model's fused q/k/v output), so a cache
    keeps only its own keys/values alive."""
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        return t.clone(memory_format=torch.contiguous_format)
    return t


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
        else:
            k, v = _own_storage(k), _own_storage(v)
        self.keys[layer_id], self.values[layer_id] = k, v
        return k, v

    def attend(self, layer_id: int, q, k, v, mask: Optional[torch.Tensor] = None):
        """New queries see every cached position and, causally, each other (or `mask` over all keys)."""
        k, v = self.append(layer_id, k, v)
        return sdpa(q, k, v, mask) if mask is not None else sdpa(q, k, v, causal=True)

    def nbytes(self) -> int:
        """Bytes of the storage the cached keys/values keep alive."""
        return storage_nbytes([*self.keys.values(), *self.values.values()])

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
    """N rows continuing one batch-1 prefix that is never copied: the one shared-prefix attention (staged
    search candidates, judge prompts with a common head), with rows leaving the batch as they finish.

    Attention is split in two and merged exactly: scores against the prefix with the rows folded into
    the query axis (one [1, h, n*q, P] product, no n-fold copy of the prefix keys), scores against each
    row's own tokens per row; one softmax (float32 at least) runs over both. The caller's mask, if any,
    covers [prefix | own tokens] of each row; else the own tokens are causal.

    Own keys/values live in one buffer per layer, [N, h, S, d], whose room S starts at `initial_steps`
    and doubles when full: T tokens cost O(log T) allocations and the room is at most twice what is used
    (`max_steps` caps it; None: no cap). `nbytes()` is the storage really held: the buffers and the
    prefix. `select(rows)` compacts the kept rows to the front of the buffers in place, so the cache it
    is called on must not be used afterwards (decoding replaces it by the result).
    """

    def __init__(self, prefix: KVCache, num_rows: int, max_steps: Optional[int] = None, initial_steps: int = 16):
        if prefix.batch_size != 1:
            raise ValueError(f"the shared prefix must have batch size 1, got {prefix.batch_size}")
        if num_rows < 1 or initial_steps < 1:
            raise ValueError(f"num_rows and initial_steps must be >= 1, got {num_rows} and {initial_steps}")
        self.prefix, self.num_rows, self.max_steps = prefix, num_rows, max_steps
        self.initial_steps = initial_steps if max_steps is None else min(initial_steps, max_steps)
        self.prefix_len = prefix.seq_len
        self.buffers: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> own keys, values [N, h, S, d]
        self.filled: Dict[int, int] = {}  # layer -> own tokens written per row
        self.active = num_rows  # rows still in the batch: the first `active` of the buffers

    @property
    def batch_size(self) -> int:
        return self.active

    @property
    def seq_len(self) -> int:
        """Positions each row attends over: the prefix and its own tokens."""
        return self.prefix_len + max(self.filled.values(), default=0)

    @property
    def suffix(self) -> KVCache:
        """The active rows' own keys/values so far, [n, h, T, d] views of the buffers."""
        out = KVCache()
        for i, (bk, bv) in self.buffers.items():
            t = self.filled[i]
            out.keys[i], out.values[i] = bk[:self.active, :, :t], bv[:self.active, :, :t]
        return out

    def nbytes(self) -> int:
        tensors = [t for kv in self.buffers.values() for t in kv]
        return storage_nbytes(tensors + list(self.prefix.keys.values()) + list(self.prefix.values.values()))

    def _room(self, layer_id: int, like: torch.Tensor, length: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The layer's own-token buffers, (re)allocated so that `length` tokens per row fit (room doubles)."""
        if self.max_steps is not None and length > self.max_steps:
            raise ValueError(f"SharedPrefixKVCache is full ({self.max_steps} steps)")
        old = self.buffers.get(layer_id)
        room = old[0].shape[2] if old is not None else 0
        if length <= room:
            return old
        room = max(length, 2 * room, self.initial_steps)
        room = room if self.max_steps is None else min(room, self.max_steps)
        shape = (self.num_rows, like.shape[1], room, like.shape[3])
        bk, bv = like.new_empty(shape), like.new_empty(shape)
        if old is not None:
            used = self.filled[layer_id]
            bk[:, :, :used], bv[:, :, :used] = old[0][:, :, :used], old[1][:, :, :used]
        self.buffers[layer_id] = (bk, bv)
        return bk, bv

    def attend(self, layer_id: int, q, k, v, mask: Optional[torch.Tensor] = None):
        """q/k/v [n_active, h, sq, d]: store the rows' new keys/values, attend over prefix + own tokens.
        mask: None (causal own tokens) or [n|1, 1, sq, P + T] (>0 = may attend) over prefix + own tokens."""
        n, h, sq, d = q.shape
        if n != self.active:
            raise ValueError(f"{n} query rows for a cache of {self.active} active rows")
        start = self.filled.get(layer_id, 0)
        bk, bv = self._room(layer_id, k, start + sq)
        bk[:n, :, start:start + sq], bv[:n, :, start:start + sq] = k, v
        self.filled[layer_id] = t = start + sq
        ks, vs = bk[:n, :, :t], bv[:n, :, :t]  # [n, h, T, d] each row's own tokens, the new ones included
        kp, vp = self.prefix.keys[layer_id], self.prefix.values[layer_id]  # [1, h, P, d]
        acc = torch.promote_types(q.dtype, torch.float32)  # softmax in float32 at least (float64 stays float64)
        q_folded = q.transpose(0, 1).reshape(1, h, n * sq, d)  # rows folded into the query axis
        scores_p = (q_folded @ kp.transpose(-1, -2)).to(acc)  # [1, h, n*sq, P]
        scores_p = scores_p.reshape(h, n, sq, -1).transpose(0, 1)  # [n, h, sq, P]
        scores_s = (q @ ks.transpose(-1, -2)).to(acc)  # [n, h, sq, T]
        scores = torch.cat((scores_p, scores_s), dim=-1) * d ** -0.5
        if mask is not None:
            scores = scores.masked_fill(~(mask > 0), float("-inf"))
        elif sq > 1:
            causal = offset_causal_mask(sq, t, q.device)  # [sq, T]: the new tokens see each other causally
            scores[..., kp.shape[2]:] = scores[..., kp.shape[2]:].masked_fill(~causal, float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(q.dtype)
        probs_p, probs_s = probs.split([kp.shape[2], t], dim=-1)
        probs_p = probs_p.transpose(0, 1).reshape(1, h, n * sq, -1)  # fold the rows again
        out_p = (probs_p @ vp).reshape(h, n, sq, d).transpose(0, 1)  # [n, h, sq, d]
        return out_p + probs_s @ vs

    def select(self, rows: Sequence[int]) -> "SharedPrefixKVCache":
        """This cache with only active rows `rows` (indices among the active ones), compacted in place."""
        keep = torch.as_tensor(list(rows), dtype=torch.long)
        for i, (bk, bv) in self.buffers.items():
            t, idx = self.filled[i], keep.to(bk.device)
            with torch.inference_mode(bk.is_inference()):  # buffers made under inference_mode stay writable
                bk[:len(keep), :, :t] = bk[idx, :, :t]  # the gather copies first, so overlapping moves are safe
                bv[:len(keep), :, :t] = bv[idx, :, :t]
        out = copy.copy(self)
        out.buffers, out.filled, out.active = self.buffers, self.filled, len(keep)
        self.active = 0  # this object's rows have moved: it serves no further step
        return out

    def row_kv(self, row: int, length: Optional[int] = None) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
        """Active row `row`'s own keys/values of its first `length` tokens (all when None), [1, h, length, d]
        copies, so the buffers can be freed."""
        return {i: (bk[row:row + 1, :, :self.filled[i] if length is None else length].clone(),
                    bv[row:row + 1, :, :self.filled[i] if length is None else length].clone())
                for i, (bk, bv) in self.buffers.items()}

    def commit(self, row: int, length: Optional[int] = None) -> KVCache:
        """A batch-1 cache of prefix + active row `row`'s first `length` own tokens (the chosen continuation)."""
        own = self.row_kv(row, length)
        out = KVCache()
        for i in self.prefix.keys:
            if i not in own:
                out.keys[i], out.values[i] = self.prefix.keys[i], self.prefix.values[i]
                continue
            out.keys[i] = torch.cat((self.prefix.keys[i], own[i][0]), dim=2)
            out.values[i] = torch.cat((self.prefix.values[i], own[i][1]), dim=2)
        return out
