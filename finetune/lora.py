"""LoRA for CogVLM by part: low-rank adapters on the linear maps of the chosen parts, held by a `lora`
mixin and added to each base linear's output with a forward hook (a public PyTorch mechanism), so the
base weights keep their official names and the model code stays untouched.

    y = W x (+ b)  ->  y = W x (+ b) + (alpha / r) * B (A dropout(x)),   A: [r, in], B: [out, r] = 0 at start

`merge_lora(model)` folds every adapter into its base weight (W += alpha/r * B A) and removes the mixin;
the merged model computes the same function as base + adapters.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from sat.model.base_model import BaseMixin

from .parts import PARTS, linear_layers, parse_parts

DEFAULT_TARGETS = ("language", "vision_experts")


@dataclass(frozen=True)
class LoRAConfig:
    """rank r, alpha (scaling alpha / r), dropout on the adapter input, parts whose linears get adapters."""
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Tuple[str, ...] = field(default=DEFAULT_TARGETS)

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        object.__setattr__(self, "targets", tuple(parse_parts(self.targets, allow_all=True)))
        if not self.targets:
            raise ValueError(f"LoRA needs at least one target part ({', '.join(PARTS)})")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LoRAConfig":
        return cls(rank=int(d["rank"]), alpha=float(d["alpha"]), dropout=float(d.get("dropout", 0.0)),
                   targets=tuple(d["targets"]))


def target_linears(model: nn.Module, part: str) -> List[Tuple[str, nn.Module]]:
    """(name relative to the model, linear) for the linears of `part` that LoRA adapts.

    language: the transformer layers' QKV/dense/FFN and the language gates (not embeddings, not lm_head);
    vision_experts: every expert linear; vit: the ViT layers' linears; projector: the GLU's linears.
    """
    eva, mlp, rotary = model.mixins["eva"], model.mixins["mlp"], model.mixins["rotary"]
    owners: Dict[str, List[Tuple[str, nn.Module]]] = {
        "language": [("transformer.layers", model.transformer.layers), ("mixins.mlp.gate_proj", mlp.gate_proj)],
        "vision_experts": [("mixins.rotary.vision_query_key_value_list", rotary.vision_query_key_value_list),
                           ("mixins.rotary.vision_dense_list", rotary.vision_dense_list),
                           ("mixins.mlp.vision_dense_h_to_4h_list", mlp.vision_dense_h_to_4h_list),
                           ("mixins.mlp.vision_dense_4h_to_h_list", mlp.vision_dense_4h_to_h_list),
                           ("mixins.mlp.vision_gate_proj", mlp.vision_gate_proj)],
        "vit": [("mixins.eva.vit_model.transformer.layers", eva.vit_model.transformer.layers)],
        "projector": [("mixins.eva.linear_proj", eva.linear_proj)],
    }
    return [(f"{prefix}.{name}" if name else prefix, m)
            for prefix, owner in owners[part] for name, m in linear_layers(owner)]


class LoRAAdapter(nn.Module):
    """delta(x) = (alpha / r) * B (A dropout(x)); B starts at zero so the model starts unchanged."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float,
                 dtype=torch.float, device=None):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features, dtype=dtype, device=device))
        self.B = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(self.dropout(x), self.A), self.B) * self.scaling  # [..., in] -> [..., out]

    def delta_weight(self) -> torch.Tensor:
        return (self.B.float() @ self.A.float()) * self.scaling  # [out, r] @ [r, in] -> [out, in]


class _AddAdapterOutput:
    """Forward hook of a base linear: output + adapter(input)."""

    def __init__(self, adapter: LoRAAdapter):
        self.adapter = adapter

    def __call__(self, module, inputs, output):
        return output + self.adapter(inputs[0]).to(output.dtype)


def _key(name: str) -> str:
    if "__" in name:
        raise ValueError(f"module name {name!r} contains '__', which LoRA keys use as the separator")
    return name.replace(".", "__")


class LoRAMixin(BaseMixin):
    """Mixin `lora`: the adapters (`adapters[<module path with __>]`) and the hooks that apply them."""

    def __init__(self, config: LoRAConfig):
        super().__init__()
        self.config = config
        self.adapters = nn.ModuleDict()
        self._handles = []

    def attach(self, model: nn.Module) -> "LoRAMixin":
        """Create one adapter per target linear of `model` and hook it in (called once)."""
        if self._handles:
            raise RuntimeError("LoRA adapters are already attached")
        for part in self.config.targets:
            for name, linear in target_linears(model, part):
                out_features, in_features = linear.weight.shape
                adapter = LoRAAdapter(in_features, out_features, self.config.rank, self.config.alpha,
                                      self.config.dropout, dtype=linear.weight.dtype, device=linear.weight.device)
                self.adapters[_key(name)] = adapter
                self._handles.append(linear.register_forward_hook(_AddAdapterOutput(adapter)))
        return self

    def targets(self, model: nn.Module) -> List[Tuple[nn.Module, LoRAAdapter]]:
        return [(model.get_submodule(key.replace("__", ".")), adapter) for key, adapter in self.adapters.items()]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def add_lora(model: nn.Module, config: LoRAConfig) -> LoRAMixin:
    """Add the `lora` mixin with adapters on `config.targets`; returns it."""
    mixin = LoRAMixin(config)
    model.add_mixin("lora", mixin)
    mixin.attach(model)
    return mixin


def freeze_for_lora(model: nn.Module, trainable_parts: Sequence[str] = ()) -> None:
    """Only the adapters (and the base weights of `trainable_parts`, if any) train."""
    from .parts import apply_freeze
    apply_freeze(model, [p for p in PARTS if p not in trainable_parts])
    for p in model.mixins["lora"].parameters():
        p.requires_grad_(True)


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight, remove hooks and the mixin; returns the number merged."""
    mixin = model.mixins["lora"]
    pairs = mixin.targets(model)
    for linear, adapter in pairs:
        linear.weight.add_(adapter.delta_weight().to(linear.weight.dtype))
    mixin.detach()
    model.del_mixin("lora")
    return len(pairs)
