"""The four parts of a CogVLM model, by the module that owns each parameter, and the freeze policy.

    vit             mixins['eva'].vit_model                     EVA2-CLIP image encoder
    projector       mixins['eva'].linear_proj, boi, eoi         image tokens into the LM width
    vision_experts  mixins['rotary'].vision_*, mixins['mlp'].vision_*   expert QKV/dense/FFN of image tokens
    language        transformer, mixins['mlp'].gate_proj, mixins['lm']  the LLaMA language model

Every parameter of the model belongs to exactly one part (`check_partition`). What trains is decided
by these owners, never by matching parameter names.
"""
from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Sequence, Tuple

import torch
from torch import nn

PARTS: Tuple[str, ...] = ("vit", "projector", "vision_experts", "language")


def _own_parameters(module: nn.Module) -> List[nn.Parameter]:
    """Parameters registered directly on `module` (not on its children)."""
    return [p for p in module._parameters.values() if p is not None]


def part_modules(model: nn.Module) -> Dict[str, List[nn.Module]]:
    """The modules whose parameters make up each part (whole subtrees)."""
    eva, mlp, rotary = model.mixins["eva"], model.mixins["mlp"], model.mixins["rotary"]
    return {
        "vit": [eva.vit_model],
        "projector": [eva.linear_proj],
        "vision_experts": [rotary.vision_query_key_value_list, rotary.vision_dense_list,
                           mlp.vision_dense_h_to_4h_list, mlp.vision_dense_4h_to_h_list, mlp.vision_gate_proj],
        "language": [model.transformer, mlp.gate_proj, model.mixins["lm"]],
    }


def part_parameters(model: nn.Module) -> Dict[str, List[nn.Parameter]]:
    """Each part's parameters; boi/eoi (parameters of the eva mixin itself) go with the projector."""
    out: Dict[str, List[nn.Parameter]] = {}
    for name, modules in part_modules(model).items():
        seen, params = set(), []
        for m in modules:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        out[name] = params
    out["projector"] += _own_parameters(model.mixins["eva"])  # boi, eoi
    return out


def check_partition(model: nn.Module, extra_owners: Iterable[nn.Module] = ()) -> None:
    """Raise if a parameter is in no part or in two (a model change that the policy must learn about).

    `extra_owners` are modules whose parameters are deliberately outside the parts (e.g. LoRA adapters).
    """
    owner: Dict[int, str] = {}
    for name, params in part_parameters(model).items():
        for p in params:
            if id(p) in owner:
                raise AssertionError(f"a parameter is in both {owner[id(p)]} and {name}")
            owner[id(p)] = name
    extra = {id(p) for m in extra_owners for p in m.parameters()}
    stray = [n for n, p in model.named_parameters() if id(p) not in owner and id(p) not in extra]
    if stray:
        raise AssertionError(f"{len(stray)} parameter(s) belong to no part: {', '.join(stray[:8])}")


def parse_parts(spec, *, allow_all: bool = True) -> List[str]:
    """'vit,projector' / ['vit', 'projector'] / 'none' / 'all' -> a list of part names (checked)."""
    if spec is None:
        return []
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    names: List[str] = []
    for item in items:
        names += [s.strip() for s in str(item).replace(" ", ",").split(",") if s.strip()]
    if names in (["none"], []):
        return []
    if names == ["all"] and allow_all:
        return list(PARTS)
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}"
                         + (", or none / all" if allow_all else ""))
    return list(dict.fromkeys(names))


def apply_freeze(model: nn.Module, frozen: Sequence[str]) -> None:
    """requires_grad = False for every parameter of the `frozen` parts, True for the other parts."""
    for name, params in part_parameters(model).items():
        for p in params:
            p.requires_grad_(name not in frozen)


def trainable_summary(model: nn.Module, extra: Dict[str, nn.Module] = None) -> Dict[str, Tuple[int, int]]:
    """{part: (trainable, total)} parameter counts, plus any `extra` owners (e.g. {'lora': mixin})."""
    out = {name: (sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps))
           for name, ps in part_parameters(model).items()}
    for name, module in (extra or {}).items():
        ps = list(module.parameters())
        out[name] = (sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps))
    return out


def format_summary(summary: Dict[str, Tuple[int, int]]) -> str:
    rows = [f"  {name:<15} {t:>13,} / {n:>13,} trainable" for name, (t, n) in summary.items()]
    t_all = sum(t for t, _ in summary.values())
    n_all = sum(n for _, n in summary.values())
    rows.append(f"  {'total':<15} {t_all:>13,} / {n_all:>13,} trainable ({100.0 * t_all / max(1, n_all):.2f}%)")
    return "\n".join(rows)


def linear_layers(module: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """(qualified name, module) of every linear map under `module`: nn.Linear and SAT's parallel linears."""
    from sat.mpu.layers import ColumnParallelLinear, RowParallelLinear
    for name, m in module.named_modules():
        if isinstance(m, (nn.Linear, ColumnParallelLinear, RowParallelLinear)):
            yield name, m
