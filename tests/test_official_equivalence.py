"""Logits equal the official CogVLM SAT implementation on the same weights (opt-in).

Set COGVLM_REPO to a checkout of THUDM/CogVLM. Its `utils/models/` is imported as it is (nothing is
copied here). Without CUDA two stand-ins let it run on CPU: xformers' memory-efficient attention becomes
SDPA, and SAT's Triton rotary kernel becomes the same arithmetic in PyTorch. With CUDA only xformers may
need the stand-in, so the official Triton kernel itself is checked against our plain-PyTorch rotary.
"""
import importlib.util
import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from models.cogvlm import CogVLMModel
from models.config import EVAConfig, get_preset
from tests.helpers import image_prompt_inputs

REPO = os.environ.get("COGVLM_REPO")
pytestmark = pytest.mark.skipif(not REPO, reason="set COGVLM_REPO to a THUDM/CogVLM checkout")


def _install_stand_ins():
    if importlib.util.find_spec("xformers") is None:
        ops = types.ModuleType("xformers.ops")

        def memory_efficient_attention(q, k, v, p=0.0, scale=None):  # q/k/v [B, N, heads, d]
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
            return out.transpose(1, 2)

        ops.memory_efficient_attention = memory_efficient_attention
        sys.modules["xformers"] = types.ModuleType("xformers")
        sys.modules["xformers.ops"] = ops
    if not torch.cuda.is_available():
        import sat.model.position_embedding.triton_rotary_embeddings as triton_rotary

        def rotary_in_torch(x, cos, sin, position_id, interleaved=False, inplace=False, **_):
            c, s = cos[position_id][:, None], sin[position_id][:, None]  # [b, 1, s, d/2]
            x0, x1 = x.chunk(2, dim=-1)
            out = torch.cat([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1)
            return x.copy_(out) if inplace else out

        triton_rotary.apply_rotary_emb_func = rotary_in_torch


def _official_class():
    """Import utils/models/cogvlm_model.py without utils/models/__init__.py (it needs timm for CogAgent)."""
    _install_stand_ins()
    folder = os.path.join(REPO, "utils", "models")
    package = types.ModuleType("cogvlm_official")
    package.__path__ = [folder]
    sys.modules["cogvlm_official"] = package
    spec = importlib.util.spec_from_file_location("cogvlm_official.cogvlm_model", os.path.join(folder, "cogvlm_model.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.CogVLMModel


def test_logits_equal_official():
    official_cls = _official_class()
    # The official code hard-codes a ViT width of 1792 and 32 expert layers; the rest is tiny.
    cfg = get_preset("cogvlm-tiny").replace(eva=EVAConfig(num_layers=2, hidden_size=1792, num_attention_heads=16,
                                                          inner_hidden_size=256, image_size=[28, 28], patch_size=7))
    ours = CogVLMModel(CogVLMModel.get_args(**cfg.to_dict())).eval()
    official = official_cls(official_cls.get_args(**cfg.to_dict(), mode="inference", world_size=1, rank=0,
                                                  local_rank=0, deepspeed=False, bf16=False, fp16=False,
                                                  device="cpu")).eval()
    g = torch.Generator().manual_seed(1)
    state = {k: v if k.endswith("inv_freq") else torch.randn(v.shape, generator=g) * 0.05
             for k, v in ours.state_dict().items()}
    assert not official.load_state_dict(state, strict=True).missing_keys
    ours.load_state_dict(state, strict=True)
    inputs = image_prompt_inputs(cfg, torch.randint(3, cfg.vocab_size, (2, 9), generator=g))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ours, official = ours.to(device), official.to(device)
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    with torch.no_grad():
        a, b = ours(**inputs)[0], official(**inputs)[0]
        assert (a - b).abs().max() < 1e-4
        # Padding mask path (not the causal fast path).
        mask = inputs["attention_mask"].repeat(2, 1, 1, 1)
        mask[1, :, :, -3:] = 0
        a, b = ours(**dict(inputs, attention_mask=mask))[0], official(**dict(inputs, attention_mask=mask))[0]
        assert (a[:, :-3] - b[:, :-3]).abs().max() < 1e-4
