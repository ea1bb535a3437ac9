"""Scaled dot-product attention for the language model, with SAT's mask convention (1 = may attend)."""
import math
from typing import Optional

import torch
import torch.nn.functional as F


def is_causal_mask(mask: Optional[torch.Tensor]) -> bool:
    """True when `mask` [.., n, n] is exactly the lower-triangular all-ones pattern (cheap to test once)."""
    if mask is None or mask.dim() < 2 or mask.shape[-1] != mask.shape[-2]:
        return False
    n = mask.shape[-1]
    tril = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
    return bool(((mask > 0) == tril).all())


def offset_causal_mask(q_len: int, k_len: int, device) -> torch.Tensor:
    """[q_len, k_len] bool: query i (the last q_len positions) sees keys j <= k_len - q_len + i."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    return torch.arange(k_len, device=device)[None, :] <= q_pos


def sdpa(q, k, v, mask: Optional[torch.Tensor] = None, causal: bool = False, dropout_p: float = 0.0):
    """q [b, h, sq, d], k/v [b, h, sk, d]; mask broadcastable to [b, h, sq, sk] (>0 = attend).

    Causal with sq != sk is aligned to the end (new queries after cached keys), unlike SDPA's flag.
    """
    sq, sk = q.shape[-2], k.shape[-2]
    if causal and mask is None:
        if sq == sk:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        if sq == 1:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        mask = offset_causal_mask(sq, sk, q.device)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask > 0  # no `mask.all()` shortcut: it would stop the host at every layer
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def attention_scores_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def segment_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, n] segment ids (0 = padding) -> [B, 1, n, n] bool: causal, within one segment only.
    Padding sees earlier padding (no empty row, which would make softmax NaN)."""
    pos = torch.arange(segment_ids.shape[1], device=segment_ids.device)
    causal = pos[:, None] >= pos[None, :]  # [n, n]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, n, n]
    return (same & causal).unsqueeze(1)  # [B, 1, n, n]


def _flash_varlen():
    """flash-attn's variable-length kernel when installed (CUDA only), else None."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


class PackedAttention:
    """Block-diagonal causal attention for rows of packed samples, planned once per forward.

    On CUDA with flash-attn installed and half-precision inputs: its varlen kernel over the real tokens
    (no n x n mask at all). Otherwise causal SDPA per sample block (the blocks are read once per forward),
    so a row of k samples costs what the k samples cost alone, not a full row's n x n.
    """

    def __init__(self, segment_ids: torch.Tensor):
        self.segment_ids = segment_ids  # [B, n]
        self._blocks = None
        self._plan = None

    def _block_plan(self):
        """Per row: [(start, end)] of each sample, and where the padding starts."""
        plan = []
        for row in self.segment_ids.tolist():
            blocks, start = [], 0
            for i in range(1, len(row) + 1):
                if i == len(row) or row[i] != row[start]:
                    if row[start] > 0:
                        blocks.append((start, i))
                    start = i
            plan.append(blocks)
        return plan

    def _per_block(self, q, k, v, dropout_p):
        if self._blocks is None:
            self._blocks = self._block_plan()
        n = q.shape[2]
        rows = []
        for r, blocks in enumerate(self._blocks):
            pieces, end = [], 0
            for s, e in blocks:
                if s > end:  # padding between blocks (never produced by the collator; kept for safety)
                    pieces.append(q.new_zeros(1, q.shape[1], s - end, v.shape[-1]))
                pieces.append(F.scaled_dot_product_attention(q[r:r + 1, :, s:e], k[r:r + 1, :, s:e], v[r:r + 1, :, s:e],
                                                             is_causal=True, dropout_p=dropout_p))
                end = e
            if end < n:  # the padded tail: zeros (no label, reaches nothing)
                pieces.append(q.new_zeros(1, q.shape[1], n - end, v.shape[-1]))
            rows.append(torch.cat(pieces, dim=2))  # [1, h, n, d]
        return torch.cat(rows, dim=0)  # [b, h, n, d]

    def _varlen_plan(self):
        b, n = self.segment_ids.shape
        flat = self.segment_ids.reshape(-1)  # [B * n]
        keep = (flat > 0).nonzero().squeeze(1)  # real tokens, in order
        row = torch.div(keep, n, rounding_mode="floor")
        key = row * (int(flat.max()) + 1) + flat.index_select(0, keep)  # one key per (row, segment)
        _, counts = torch.unique_consecutive(key, return_counts=True)
        cu = torch.nn.functional.pad(counts.cumsum(0), (1, 0)).to(torch.int32)
        return keep, cu, int(counts.max())

    def attend(self, q, k, v, dropout_p: float = 0.0):
        """q/k/v [b, h, n, d] -> [b, h, n, d]; padding positions get zeros."""
        varlen = _flash_varlen() if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) else None
        if varlen is None:
            return self._per_block(q, k, v, dropout_p)
        if self._plan is None:
            self._plan = self._varlen_plan()
        keep, cu, max_len = self._plan
        b, h, n, d = q.shape

        def tokens(t):  # [b, h, n, d] -> [real tokens, h, d]
            return t.permute(0, 2, 1, 3).reshape(b * n, h, d).index_select(0, keep)

        out = varlen(tokens(q), tokens(k), tokens(v), cu, cu, max_len, max_len, dropout_p=dropout_p, causal=True)
        full = q.new_zeros(b * n, h, d).index_copy(0, keep, out)
        return full.reshape(b, n, h, d).permute(0, 2, 1, 3)  # [b, h, n, d]
