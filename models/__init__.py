"""CogVLM as SwissArmyTransformer mixins, its presets, tokenizer and checkpoint I/O.

Names that need SAT/DeepSpeed (the model, the caches) load on first use, so `models.tokenizer` and
`models.config` import in milliseconds.
"""
import importlib

from .config import CogVLMConfig, EVAConfig, PRESETS, get_preset
from .tokenizer import LlamaTokenizer, build_tiny_tokenizer, load_tokenizer, tokenizer_for

_LAZY = {"CogVLMModel": ".cogvlm", "from_pretrained": ".cogvlm", "CheckpointError": ".checkpoint",
         "KVCache": ".kv_cache", "SharedPrefixKVCache": ".kv_cache"}

__all__ = ["CogVLMConfig", "EVAConfig", "PRESETS", "get_preset", "LlamaTokenizer", "build_tiny_tokenizer",
           "load_tokenizer", "tokenizer_for", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
