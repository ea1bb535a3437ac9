"""The `config.json` of the official Hugging Face `cogvlm-*-hf` repositories, and its mapping to and
from our `model_config.json` (the SAT keys). Fields the HF architecture cannot express are errors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Union

from .config import CogVLMConfig, EVAConfig

HF_ARCHITECTURE = "CogVLMForCausalLM"
# The remote-code classes the official repositories name; their files must sit beside config.json.
AUTO_MAP = {"AutoConfig": "configuration_cogvlm.CogVLMConfig",
            "AutoModelForCausalLM": "modeling_cogvlm.CogVLMForCausalLM"}
# Our prompt templates <-> the official `template_version` (HF "chat" is the "Question: .. Answer:" format).
TEMPLATE_TO_HF = {"chat_old": "chat", "base": "base", "vqa": "vqa"}
TEMPLATE_FROM_HF = {v: k for k, v in TEMPLATE_TO_HF.items()}
DEFAULT_TOKENIZER = "vicuna-7b-v1.5"
TOKEN_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


class HFConfigError(ValueError):
    """A config.json that does not describe a CogVLM model we can load; names the file and the field."""


def is_hf_dir(path: Union[str, Path]) -> bool:
    """True for a directory in the HF layout: config.json naming CogVLMForCausalLM, and no model_config.json."""
    path = Path(path)
    cfg = path / "config.json"
    if not cfg.is_file() or (path / "model_config.json").is_file():
        return False
    try:
        return HF_ARCHITECTURE in (json.loads(cfg.read_text()).get("architectures") or [])
    except (json.JSONDecodeError, AttributeError):
        return False


def read_hf_config(path: Union[str, Path]) -> Dict[str, Any]:
    file = Path(path) / "config.json" if Path(path).is_dir() else Path(path)
    try:
        cfg = json.loads(file.read_text())
    except FileNotFoundError:
        raise HFConfigError(f"{file}: missing (is {path} a Hugging Face model directory?)") from None
    except json.JSONDecodeError as e:
        raise HFConfigError(f"{file}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(cfg, dict):
        raise HFConfigError(f"{file}: expected a JSON object")
    return cfg


def hf_config_from_sat(model_config: Dict[str, Any], torch_dtype: str) -> Dict[str, Any]:
    """config.json for a model described by our model_config.json; torch_dtype e.g. 'bfloat16'."""
    cfg = CogVLMConfig.from_dict(model_config)
    if cfg.num_vision_expert_layers < cfg.num_layers:
        raise HFConfigError(f"num_vision_expert_layers {cfg.num_vision_expert_layers} < num_layers {cfg.num_layers}: "
                            "the HF architecture has vision experts in every layer")
    if cfg.text_processor_version not in TEMPLATE_TO_HF:
        raise HFConfigError(f"text_processor_version {cfg.text_processor_version!r} has no HF template_version "
                            f"(HF knows {', '.join(TEMPLATE_FROM_HF)}, ours {', '.join(TEMPLATE_TO_HF)})")
    eva = cfg.eva
    if eva.image_size[0] != eva.image_size[1]:
        raise HFConfigError(f"eva_args.image_size {eva.image_size}: the HF vision config holds one square size")
    out = {
        "architectures": [HF_ARCHITECTURE], "auto_map": dict(AUTO_MAP), **TOKEN_IDS,
        "hidden_act": "silu", "hidden_size": cfg.hidden_size, "initializer_range": 0.02,
        "intermediate_size": cfg.inner_hidden_size, "max_position_embeddings": cfg.max_sequence_length,
        "num_attention_heads": cfg.num_attention_heads, "num_hidden_layers": cfg.num_layers,
        "rms_norm_eps": cfg.layernorm_epsilon, "template_version": TEMPLATE_TO_HF[cfg.text_processor_version],
        "tie_word_embeddings": False, "torch_dtype": torch_dtype, "use_cache": True,
        "vision_config": {
            "dropout_prob": 0.0, "hidden_act": "gelu", "in_channels": eva.in_channels, "hidden_size": eva.hidden_size,
            "image_size": eva.image_size[0], "intermediate_size": eva.inner_hidden_size,
            "layer_norm_eps": eva.layernorm_epsilon, "num_heads": eva.num_attention_heads,
            "num_hidden_layers": eva.num_layers, "num_positions": eva.pre_len + eva.num_patches + eva.post_len,
            "patch_size": eva.patch_size,
        },
        "vocab_size": cfg.vocab_size,
    }
    if cfg.tokenizer_type != DEFAULT_TOKENIZER:  # an extra key the HF code ignores; keeps the round trip exact
        out["tokenizer_type"] = cfg.tokenizer_type
    return out


def _field(cfg: dict, key: str, source: str, kind=int):
    if key not in cfg:
        raise HFConfigError(f"{source}: missing field {key!r}")
    value = cfg[key]
    if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise HFConfigError(f"{source}: field {key!r} must be a positive integer, got {value!r}")
    return value


def sat_config_from_hf(hf: Dict[str, Any], source: str = "config.json") -> Dict[str, Any]:
    """Our model_config.json for an HF config.json (errors name `source` and the field)."""
    if HF_ARCHITECTURE not in (hf.get("architectures") or []):
        raise HFConfigError(f"{source}: architectures {hf.get('architectures')!r} does not name {HF_ARCHITECTURE}")
    for key, expected in (("hidden_act", "silu"), ("tie_word_embeddings", False)):
        if hf.get(key, expected) != expected:
            raise HFConfigError(f"{source}: {key} {hf[key]!r} is not supported (CogVLM uses {expected!r})")
    vision = hf.get("vision_config")
    if not isinstance(vision, dict):
        raise HFConfigError(f"{source}: missing field 'vision_config' (an object)")
    vsource = f"{source} vision_config"
    if vision.get("hidden_act", "gelu") != "gelu":
        raise HFConfigError(f"{vsource}: hidden_act {vision['hidden_act']!r} is not supported (EVA2-CLIP uses 'gelu')")
    template = hf.get("template_version", "chat")
    if template not in TEMPLATE_FROM_HF:
        raise HFConfigError(f"{source}: template_version {template!r} unknown (expected one of "
                            f"{', '.join(TEMPLATE_FROM_HF)})")
    image = _field(vision, "image_size", vsource)
    patch = _field(vision, "patch_size", vsource)
    eva = EVAConfig(num_layers=_field(vision, "num_hidden_layers", vsource),
                    hidden_size=_field(vision, "hidden_size", vsource),
                    num_attention_heads=_field(vision, "num_heads", vsource),
                    inner_hidden_size=_field(vision, "intermediate_size", vsource),
                    image_size=[image, image], patch_size=patch,
                    layernorm_epsilon=float(vision.get("layer_norm_eps", 1e-6)),
                    in_channels=int(vision.get("in_channels", 3)))
    positions = eva.pre_len + eva.num_patches + eva.post_len
    if vision.get("num_positions", positions) != positions:
        raise HFConfigError(f"{vsource}: num_positions {vision['num_positions']} does not fit image_size {image} "
                            f"with patch_size {patch} ({positions} = 1 + {eva.num_patches} patches)")
    layers = _field(hf, "num_hidden_layers", source)
    cfg = CogVLMConfig(num_layers=layers, hidden_size=_field(hf, "hidden_size", source),
                       num_attention_heads=_field(hf, "num_attention_heads", source),
                       vocab_size=_field(hf, "vocab_size", source),
                       inner_hidden_size=_field(hf, "intermediate_size", source),
                       max_sequence_length=int(hf.get("max_position_embeddings", 2048)),
                       layernorm_epsilon=float(hf.get("rms_norm_eps", 1e-5)), num_vision_expert_layers=layers,
                       eva=eva, tokenizer_type=hf.get("tokenizer_type", DEFAULT_TOKENIZER),
                       text_processor_version=TEMPLATE_FROM_HF[template])
    if cfg.hidden_size % cfg.num_attention_heads:
        raise HFConfigError(f"{source}: hidden_size {cfg.hidden_size} is not a multiple of num_attention_heads "
                            f"{cfg.num_attention_heads}")
    return {**cfg.to_dict(), "layernorm_epsilon": cfg.layernorm_epsilon}  # stated, as rms_norm_eps is
