"""Rotary position embedding (GPT-NeoX half-split layout) in plain PyTorch, indexed by position ids.

Numerically the same as SAT's Triton `FastRotaryEmbedding` in fp32: cos/sin of (position * inv_freq),
cast to the query dtype, rotating the first and second halves of each head. Runs on any device.
"""
import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        # Saved in official checkpoints as `mixins.rotary.rotary_emb.inv_freq`; recomputed when absent.
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=True)

    def compute_inv_freq(self, device=None) -> torch.Tensor:
        exponent = torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim
        return 1.0 / (self.base ** exponent)

    def cos_sin(self, position_ids: torch.Tensor, dtype: torch.dtype):
        """position_ids [b, s] -> cos, sin [b, 1, s, head_dim/2] in `dtype` (angles computed in fp32)."""
        inv_freq = self.inv_freq.float()
        angles = position_ids.to(inv_freq.device, torch.float32)[..., None] * inv_freq  # [b, s, d/2]
        return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [b, h, s, d]; (x0, x1) halves -> (x0 cos - x1 sin, x0 sin + x1 cos)."""
        x0, x1 = x.chunk(2, dim=-1)
        return torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, position_ids: torch.Tensor):
        """q, k [b, h, s, d]; position_ids [b or 1, s] -> rotated (q, k)."""
        if position_ids.dim() == 1:
            position_ids = position_ids[None]
        cos, sin = self.cos_sin(position_ids, q.dtype)
        return self.rotate(q, cos, sin), self.rotate(k, cos, sin)
