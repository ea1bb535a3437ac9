"""SAT <-> Hugging Face (`cogvlm-*-hf`) conversion: the one name table, and the command line.

    python -m models.convert --to hf  SAT_CHECKPOINT_DIR OUT_DIR [--dtype bf16|fp16|fp32] [--shard-size 5GB]
    python -m models.convert --to sat HF_DIR OUT_DIR [--iteration 1] [--save-format pt|safetensors]

Every tensor is renamed by `NAME_TABLE`, nothing else: both layouts fuse QKV as [q; k; v] rows with
the heads inside each block, both rotate the two halves of each head (GPT-NeoX style), and both store
linears as [out, in], so no weight is permuted, split or transposed. A tensor without a row, a missing
tensor or a shape mismatch is an error that names it; nothing is dropped.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .checkpoint import CheckpointError, check_keys
from .hf_config import hf_config_from_sat, is_hf_dir, read_hf_config, sat_config_from_hf
from .safetensors_io import SafetensorsReader, nbytes, parse_size, write_sharded
from .tokenizer_files import copy_tokenizer_files

_EVA = "mixins.eva.vit_model."
_VIT_LAYER = _EVA + "transformer.layers.{V}."
_HF_VIT_LAYER = "model.vision.transformer.layers.{V}."


def _weight_and_bias(sat: str, hf: str) -> Tuple[Tuple[str, str], ...]:
    return (f"{sat}.weight", f"{hf}.weight"), (f"{sat}.bias", f"{hf}.bias")


# (SAT name, HF name). {L}: index of a language layer, {V}: index of a ViT layer.
NAME_TABLE: Tuple[Tuple[str, str], ...] = (
    # language model; the expert (vision) weights sit beside the language ones in every layer
    ("transformer.word_embeddings.weight", "model.embed_tokens.weight"),
    ("transformer.layers.{L}.input_layernorm.weight", "model.layers.{L}.input_layernorm.weight"),
    ("transformer.layers.{L}.attention.query_key_value.weight",
     "model.layers.{L}.self_attn.language_expert_query_key_value.weight"),
    ("transformer.layers.{L}.attention.dense.weight", "model.layers.{L}.self_attn.language_expert_dense.weight"),
    ("mixins.rotary.vision_query_key_value_list.{L}.weight",
     "model.layers.{L}.self_attn.vision_expert_query_key_value.weight"),
    ("mixins.rotary.vision_dense_list.{L}.weight", "model.layers.{L}.self_attn.vision_expert_dense.weight"),
    ("transformer.layers.{L}.post_attention_layernorm.weight", "model.layers.{L}.post_attention_layernorm.weight"),
    ("mixins.mlp.gate_proj.{L}.weight", "model.layers.{L}.mlp.language_mlp.gate_proj.weight"),
    ("transformer.layers.{L}.mlp.dense_h_to_4h.weight", "model.layers.{L}.mlp.language_mlp.up_proj.weight"),
    ("transformer.layers.{L}.mlp.dense_4h_to_h.weight", "model.layers.{L}.mlp.language_mlp.down_proj.weight"),
    ("mixins.mlp.vision_gate_proj.{L}.weight", "model.layers.{L}.mlp.vision_mlp.gate_proj.weight"),
    ("mixins.mlp.vision_dense_h_to_4h_list.{L}.weight", "model.layers.{L}.mlp.vision_mlp.up_proj.weight"),
    ("mixins.mlp.vision_dense_4h_to_h_list.{L}.weight", "model.layers.{L}.mlp.vision_mlp.down_proj.weight"),
    ("transformer.final_layernorm.weight", "model.norm.weight"),
    ("mixins.lm.lm_head.weight", "lm_head.weight"),
    # EVA2-CLIP ViT: SAT's one-row word embedding is the CLS token
    *_weight_and_bias(_EVA + "mixins.patch_embedding.proj", "model.vision.patch_embedding.proj"),
    (_EVA + "transformer.word_embeddings.weight", "model.vision.patch_embedding.cls_embedding"),
    (_EVA + "transformer.position_embeddings.weight", "model.vision.patch_embedding.position_embedding.weight"),
    *_weight_and_bias(_VIT_LAYER + "input_layernorm", _HF_VIT_LAYER + "input_layernorm"),
    *_weight_and_bias(_VIT_LAYER + "attention.query_key_value", _HF_VIT_LAYER + "attention.query_key_value"),
    *_weight_and_bias(_VIT_LAYER + "attention.dense", _HF_VIT_LAYER + "attention.dense"),
    *_weight_and_bias(_VIT_LAYER + "mlp.dense_h_to_4h", _HF_VIT_LAYER + "mlp.fc1"),
    *_weight_and_bias(_VIT_LAYER + "mlp.dense_4h_to_h", _HF_VIT_LAYER + "mlp.fc2"),
    *_weight_and_bias(_VIT_LAYER + "post_attention_layernorm", _HF_VIT_LAYER + "post_attention_layernorm"),
    # GLU projector and the BOI/EOI embeddings
    *((f"mixins.eva.linear_proj.{n}.weight", f"model.vision.linear_proj.{n}.weight")
      for n in ("linear_proj", "dense_h_to_4h", "gate_proj", "dense_4h_to_h")),
    *_weight_and_bias("mixins.eva.linear_proj.norm1", "model.vision.linear_proj.norm1"),
    ("mixins.eva.boi", "model.vision.boi"),
    ("mixins.eva.eoi", "model.vision.eoi"),
)
# Buffers computed from the configuration: SAT keeps one, HF one copy in every language layer.
REPLICATED: Tuple[Tuple[str, str], ...] = (
    ("mixins.rotary.rotary_emb.inv_freq", "model.layers.{L}.self_attn.rotary_emb.inv_freq"),
)


class ConversionError(CheckpointError):
    """A tensor that the name table does not cover, or a layout that cannot be converted."""


def _regex(pattern: str) -> "re.Pattern":
    return re.compile(re.escape(pattern).replace(r"\{L\}", r"(?P<L>\d+)").replace(r"\{V\}", r"(?P<V>\d+)") + "$")


_SAT_TO_HF = [(_regex(s), h) for s, h in NAME_TABLE]
_HF_TO_SAT = [(_regex(h), s) for s, h in NAME_TABLE]
_REPLICATED_SAT = {s: h for s, h in REPLICATED}
_REPLICATED_HF = [(_regex(h), s) for s, h in REPLICATED]


def _rename(name: str, table) -> Optional[str]:
    for pattern, target in table:
        m = pattern.match(name)
        if m:
            return target.format(**m.groupdict())
    return None


def hf_name(sat_name: str) -> str:
    """The HF name of a SAT tensor (ConversionError for one the table does not cover)."""
    out = _rename(sat_name, _SAT_TO_HF)
    if out is None:
        raise ConversionError(f"no HF name for SAT tensor {sat_name!r}")
    return out


def hf_module_name(sat_module: str) -> str:
    """The HF module holding the weight of a SAT linear, e.g. for LoRA targets."""
    return hf_name(sat_module + ".weight")[: -len(".weight")]


def _unmapped(names: Sequence[str], side: str, source: str) -> ConversionError:
    shown = ", ".join(sorted(names)[:12]) + (f" ... and {len(names) - 12} more" if len(names) > 12 else "")
    return ConversionError(f"{source}: {len(names)} {side} tensor(s) with no entry in the name table "
                           f"(models/convert.py NAME_TABLE): {shown}")


def sat_to_hf_names(sat_names: Sequence[str], num_layers: int, source: str = "SAT state") -> Dict[str, str]:
    """{HF name: SAT name} for every SAT tensor; replicated buffers appear once per layer."""
    plan: Dict[str, str] = {}
    unmapped = []
    for name in sat_names:
        if name in _REPLICATED_SAT:
            plan.update({_REPLICATED_SAT[name].format(L=i): name for i in range(num_layers)})
            continue
        target = _rename(name, _SAT_TO_HF)
        if target is None:
            unmapped.append(name)
        else:
            plan[target] = name
    if unmapped:
        raise _unmapped(unmapped, "SAT", source)
    return plan


def hf_to_sat_names(hf_names: Sequence[str], source: str = "HF state") -> Dict[str, List[str]]:
    """{SAT name: [HF names]}: one HF name per SAT tensor, all layer copies for a replicated buffer."""
    plan: Dict[str, List[str]] = {}
    unmapped = []
    for name in hf_names:
        target = _rename(name, _HF_TO_SAT) or _rename(name, _REPLICATED_HF)
        if target is None:
            unmapped.append(name)
        else:
            plan.setdefault(target, []).append(name)
    if unmapped:
        raise _unmapped(unmapped, "HF", source)
    return plan


def expected_shapes(model_config: dict) -> Dict[str, torch.Size]:
    """SAT name -> shape of every tensor of the model `model_config` describes (built on meta: no memory)."""
    from .cogvlm import CogVLMModel
    with torch.device("meta"):
        model = CogVLMModel(CogVLMModel.get_args(**model_config))
    return {k: v.shape for k, v in model.state_dict().items()}


def _meta(shapes: Mapping[str, Sequence[int]]) -> Dict[str, torch.Tensor]:
    return {k: torch.empty(tuple(s), device="meta") for k, s in shapes.items()}


def load_hf_state(path, model_config: dict, dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
    """SAT-named state dict of an HF directory, read lazily (memory-mapped; cast per tensor to `dtype`
    when given). Every tensor is checked by HF name and shape against the model first."""
    reader = SafetensorsReader(path)
    names = reader.names()
    expected_sat = expected_shapes(model_config)
    layers = int(model_config["num_layers"])
    expected_hf = {h: expected_sat[s] for h, s in sat_to_hf_names(list(expected_sat), layers).items()}
    found = _meta({n: reader.shape(n) for n in names})
    optional = [h for h, s in sat_to_hf_names(list(_REPLICATED_SAT), layers).items()]
    check_keys(expected_hf, found, f"{path}", optional=optional)
    state: Dict[str, torch.Tensor] = {}
    for sat, hfs in hf_to_sat_names(names, f"{path}").items():
        tensor = reader.get(hfs[0])
        for other in hfs[1:]:  # replicated buffers: every copy must agree, else one would be lost
            if not torch.equal(reader.get(other), tensor):
                raise ConversionError(f"{path}: {other} differs from {hfs[0]}; they are one SAT tensor ({sat})")
        if dtype is not None and tensor.is_floating_point() and sat not in _REPLICATED_SAT:
            tensor = tensor.to(dtype)
        state[sat] = tensor
    reader.close()
    return state


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def sat_to_hf(sat_dir, out_dir, dtype: Optional[str] = None, shard_size="5GB", iteration=None,
              progress: bool = True, trust: bool = False) -> Path:
    """Write the HF layout of a SAT checkpoint directory; returns out_dir."""
    from .checkpoint import load_state_dict
    from .config import load_model_config
    model_config = load_model_config(str(sat_dir))
    if "lora" in model_config:
        raise ConversionError(f"{sat_dir}: a LoRA training checkpoint; merge it first (python -m finetune.merge_lora "
                              f"{sat_dir}) or export its adapters (python -m finetune.merge_lora {sat_dir} --export-peft DIR)")
    state = load_state_dict(sat_dir, iteration, trust=trust)  # trust: allow a .pt that needs pickled code
    return write_hf(state, model_config, out_dir, dtype, shard_size, tokenizer_dir=sat_dir, progress=progress,
                    source=str(sat_dir))


def write_hf(state: Mapping[str, torch.Tensor], model_config: dict, out_dir, dtype: Optional[str] = None,
             shard_size="5GB", tokenizer_dir=None, progress: bool = False, source: str = "model") -> Path:
    """Write `state` (SAT names) in the HF layout: config.json, safetensors shards + index, tokenizer files."""
    out_dir = Path(out_dir)
    check_keys(expected_shapes(model_config), state, source)
    plan = sat_to_hf_names(list(state), int(model_config["num_layers"]), source)
    target = DTYPES[dtype] if dtype else None

    def cast(sat: str) -> Optional[torch.dtype]:
        """The dtype written for `sat`: `target` for parameters, buffers (inv_freq) and integers kept."""
        t = state[sat]
        return target if target is not None and t.is_floating_point() and sat not in _REPLICATED_SAT else t.dtype

    sizes = {hf: nbytes(state[s].shape, cast(s)) for hf, s in plan.items()}
    hf_config = hf_config_from_sat(model_config, _dtype_name(target or state["transformer.word_embeddings.weight"].dtype))
    out_dir.mkdir(parents=True, exist_ok=True)
    report = (lambda i, n: print(f"[convert] shard {i}/{n} written", flush=True)) if progress else None
    write_sharded(sizes, lambda hf: state[plan[hf]].to(cast(plan[hf])), out_dir, parse_size(shard_size),
                  progress=report)
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, out_dir, hf_layout=True, model_max_length=hf_config["max_position_embeddings"])
    return out_dir


def hf_to_sat(hf_dir, out_dir, iteration=1, save_format: str = "pt") -> Path:
    """Write the SAT layout of an HF directory; returns out_dir."""
    from .checkpoint import write_checkpoint_files
    hf_dir = Path(hf_dir)
    if not is_hf_dir(hf_dir):
        raise ConversionError(f"{hf_dir}: not a Hugging Face CogVLM directory (config.json naming CogVLMForCausalLM)")
    model_config = sat_config_from_hf(read_hf_config(hf_dir), f"{hf_dir / 'config.json'}")
    state = load_hf_state(hf_dir, model_config)
    write_checkpoint_files(state, out_dir, model_config, iteration=iteration, save_format=save_format)
    copy_tokenizer_files(hf_dir, out_dir, hf_layout=False)
    return Path(out_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to", required=True, choices=["hf", "sat"], help="the layout to write")
    p.add_argument("source", help="a SAT checkpoint directory (--to hf) or an HF model directory (--to sat)")
    p.add_argument("out", help="output directory")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="--to hf: cast the weights (default: keep the checkpoint's dtype)")
    p.add_argument("--shard-size", default="5GB", help="--to hf: largest shard file (default 5GB)")
    p.add_argument("--iteration", type=int, default=None,
                   help="--to hf: the SAT iteration to read (default: latest); --to sat: the one to write (default 1)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="--to hf: allow a .pt that only loads by running pickled code (an old checkpoint you trust)")
    p.add_argument("--save-format", choices=["pt", "safetensors"], default="pt",
                   help="--to sat: weights file format (default pt, the official one)")
    a = p.parse_args(argv)
    t = time.time()
    try:
        if a.to == "hf":
            out = sat_to_hf(a.source, a.out, dtype=a.dtype, shard_size=a.shard_size, iteration=a.iteration,
                            trust=a.trust_checkpoint)
        else:
            out = hf_to_sat(a.source, a.out, iteration=a.iteration or 1, save_format=a.save_format)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"convert: {e}", file=sys.stderr)
        return 2
    print(f"[convert] {a.source} -> {out} ({a.to} layout) in {time.time() - t:.1f} s")
    if a.to == "hf" and not (Path(out) / "modeling_cogvlm.py").is_file():
        print("[convert] to load it with transformers, copy the official remote-code files (configuration_cogvlm.py, "
              "modeling_cogvlm.py, visual.py, util.py) of the matching cogvlm-*-hf repository into it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
