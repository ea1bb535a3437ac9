"""CogVLM as SwissArmyTransformer mixins, its presets, tokenizer and checkpoint I/O."""
from .checkpoint import CheckpointError
from .cogvlm import CogVLMModel, from_pretrained
from .config import CogVLMConfig, EVAConfig, PRESETS, get_preset
from .kv_cache import KVCache, SharedPrefixKVCache
from .tokenizer import LlamaTokenizer, build_tiny_tokenizer, load_tokenizer, tokenizer_for

__all__ = ["CheckpointError", "CogVLMModel", "from_pretrained", "CogVLMConfig", "EVAConfig", "PRESETS", "get_preset",
           "KVCache", "SharedPrefixKVCache", "LlamaTokenizer", "build_tiny_tokenizer", "load_tokenizer",
           "tokenizer_for"]
