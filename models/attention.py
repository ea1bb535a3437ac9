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
