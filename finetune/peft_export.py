"""Export the LoRA adapters of a training checkpoint as a PEFT adapter on top of the Hugging Face layout.

    OUT_DIR/            the base model in the HF layout (config.json, safetensors shards, tokenizer files)
    OUT_DIR/adapter_config.json        PEFT LoRA config; target_modules names the HF modules
    OUT_DIR/adapter_model.safetensors  base_model.model.<HF module>.lora_A.weight / lora_B.weight

Our adapters sit on SAT's linears, which are one-to-one with HF's (the fused QKV is fused on both
sides, expert and language linears are separate modules on both), so every adapter keeps its A and B
unchanged and lands on the HF module `models.convert.hf_module_name` gives; an adapter on a module
without an HF counterpart is an error naming it. `peft.PeftModel.from_pretrained(hf_model, OUT_DIR)`
then computes what our merged model computes (scaling alpha / r on both sides).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Tuple

import torch

from models.convert import ConversionError, hf_module_name, write_hf

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def peft_adapter_state(model) -> Tuple[Dict[str, torch.Tensor], list]:
    """({PEFT key: tensor}, sorted HF module names) for the adapters of `model`'s `lora` mixin."""
    mixin = model.mixins["lora"]
    state: Dict[str, torch.Tensor] = {}
    modules, unmapped = [], []
    for key, adapter in mixin.adapters.items():
        sat_module = key.replace("__", ".")
        try:
            hf = hf_module_name(sat_module)
        except ConversionError:
            unmapped.append(sat_module)
            continue
        modules.append(hf)
        state[f"{PEFT_PREFIX}{hf}.lora_A.weight"] = adapter.A.detach().cpu().contiguous()  # [r, in]
        state[f"{PEFT_PREFIX}{hf}.lora_B.weight"] = adapter.B.detach().cpu().contiguous()  # [out, r]
    if unmapped:
        raise ConversionError(f"{len(unmapped)} LoRA adapter(s) on modules with no Hugging Face counterpart, which "
                              f"PEFT cannot express: {', '.join(sorted(unmapped)[:12])}")
    return state, sorted(modules)


def target_modules_pattern(modules) -> str:
    """A regular expression PEFT full-matches against module names: exactly the adapted HF modules."""
    return "^(" + "|".join(re.escape(m) for m in modules) + ")$"


def peft_config(lora, modules, base_model: str) -> dict:
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "bias": "none",
        "target_modules": target_modules_pattern(modules), "fan_in_fan_out": False, "use_rslora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
        "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None, "layers_pattern": None,
    }


def export_peft(model, lora, out_dir, tokenizer_dir=None, dtype=None, shard_size="5GB") -> Path:
    """Write the base weights of `model` (adapters not merged) in the HF layout and its adapters as PEFT."""
    from safetensors.torch import save_file
    out_dir = Path(out_dir)
    adapters, modules = peft_adapter_state(model)
    base = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("mixins.lora.")}
    write_hf(base, model.model_config(), out_dir, dtype=dtype, shard_size=shard_size, tokenizer_dir=tokenizer_dir,
             source=f"{out_dir} (base weights)")
    save_file(adapters, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = peft_config(lora, modules, str(out_dir.resolve()))
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
