"""Model configurations: one typed config per tower, the named presets, and the adapter to SAT's
argparse Namespace. Keys are the official `model_config.json` keys, so a preset round-trips to disk."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass(frozen=True)
class EVAConfig:
    """EVA2-CLIP ViT tower (`eva_args` in model_config.json)."""
    num_layers: int = 63
    hidden_size: int = 1792
    num_attention_heads: int = 16
    inner_hidden_size: int = 15360
    image_size: List[int] = field(default_factory=lambda: [490, 490])
    patch_size: int = 14
    layernorm_epsilon: float = 1e-6
    in_channels: int = 3
    pre_len: int = 1
    post_len: int = 0

    @property
    def num_patches(self) -> int:
        return (self.image_size[0] // self.patch_size) * (self.image_size[1] // self.patch_size)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "model_class": "EVA2CLIPModel", "num_layers": self.num_layers, "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads, "vocab_size": 1, "layernorm_order": "post",
            "model_parallel_size": 1, "max_sequence_length": self.pre_len + self.num_patches + self.post_len,
            "inner_hidden_size": self.inner_hidden_size, "use_final_layernorm": False,
            "layernorm_epsilon": self.layernorm_epsilon, "row_parallel_linear_final_bias": False,
            "image_size": list(self.image_size), "pre_len": self.pre_len, "post_len": self.post_len,
            "in_channels": self.in_channels, "patch_size": self.patch_size,
        }


@dataclass(frozen=True)
class CogVLMConfig:
    """The language model with vision experts, plus its ViT. `image_length` = number of ViT patches."""
    num_layers: int = 32
    hidden_size: int = 4096
    num_attention_heads: int = 32
    vocab_size: int = 32000
    inner_hidden_size: int = 11008
    max_sequence_length: int = 4096
    layernorm_epsilon: float = 1e-5
    # Layers [0, num_vision_expert_layers) get vision-expert weights (official: 32, i.e. all of them).
    num_vision_expert_layers: int = 32
    eva: EVAConfig = field(default_factory=EVAConfig)
    tokenizer_type: str = "vicuna-7b-v1.5"
    text_processor_version: str = "chat_old"

    @property
    def image_length(self) -> int:
        return self.eva.num_patches

    def to_dict(self) -> Dict[str, Any]:
        """The official model_config.json content."""
        d = {
            "model_class": "CogVLMModel", "tokenizer_type": self.tokenizer_type,
            "text_processor_version": self.text_processor_version,
            "num_layers": self.num_layers, "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads, "vocab_size": self.vocab_size,
            "layernorm_order": "pre", "model_parallel_size": 1,
            "max_sequence_length": self.max_sequence_length, "inner_hidden_size": self.inner_hidden_size,
            "use_bias": False, "image_length": self.image_length, "eva_args": self.eva.to_dict(),
        }
        if self.layernorm_epsilon != 1e-5:
            d["layernorm_epsilon"] = self.layernorm_epsilon
        if self.num_vision_expert_layers != 32:
            d["num_vision_expert_layers"] = self.num_vision_expert_layers
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CogVLMConfig":
        eva = dict(d.get("eva_args", {}))
        eva_fields = {f.name for f in dataclasses.fields(EVAConfig)}
        eva_cfg = EVAConfig(**{k: v for k, v in eva.items() if k in eva_fields})
        own = {f.name for f in dataclasses.fields(cls)} - {"eva"}
        cfg = cls(eva=eva_cfg, **{k: v for k, v in d.items() if k in own})
        if "image_length" in d and d["image_length"] != cfg.image_length:
            raise ValueError(f"image_length {d['image_length']} does not match the ViT: {eva_cfg.image_size} px "
                             f"with patch {eva_cfg.patch_size} gives {cfg.image_length} patches")
        return cfg

    def replace(self, **kw) -> "CogVLMConfig":
        return dataclasses.replace(self, **kw)


def _official(image_px: int, text_processor_version: str) -> CogVLMConfig:
    return CogVLMConfig(eva=EVAConfig(image_size=[image_px, image_px]),
                        text_processor_version=text_processor_version)


# Named presets, the one place where model shapes are written down.
PRESETS: Dict[str, CogVLMConfig] = {
    # A few MB: trains on a CPU in minutes. 56 px images in 7 px patches -> 64 image tokens. Two language
    # layers: in the same minutes a 2-layer model takes 1.7x the steps of a 4-layer one and ends higher
    # (75% against 73% at equal time; it is short of steps, not of depth; README).
    "cogvlm-tiny": CogVLMConfig(
        num_layers=2, hidden_size=128, num_attention_heads=4, vocab_size=1024, inner_hidden_size=344,
        max_sequence_length=1024, num_vision_expert_layers=2, tokenizer_type="tiny",
        eva=EVAConfig(num_layers=2, hidden_size=96, num_attention_heads=4, inner_hidden_size=256,
                      image_size=[56, 56], patch_size=7),
    ),
    "cogvlm-chat-v1.1": _official(490, "chat_old"),
    "cogvlm-base-490": _official(490, "base"),
    "cogvlm-base-224": _official(224, "base"),
}

# Official checkpoints cannot be downloaded here; this says where to put them.
OFFICIAL_ARCHIVES = {
    "cogvlm-chat-v1.1": "cogvlm-chat-v1.1.zip",
    "cogvlm-base-490": "cogvlm-base-490.zip",
    "cogvlm-base-224": "cogvlm-base-224.zip",
}


def get_preset(name: str) -> CogVLMConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def load_model_config(path: str) -> Dict[str, Any]:
    """Read a checkpoint directory's model_config.json with a clear error."""
    cfg_path = os.path.join(path, "model_config.json") if os.path.isdir(path) else path
    try:
        with open(cfg_path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{cfg_path}: no model_config.json (is {path} a SAT checkpoint directory?)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: invalid JSON at line {e.lineno}: {e.msg}") from None
