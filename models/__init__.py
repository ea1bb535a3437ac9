"""CogVLM as SwissArmyTransformer mixins, its presets, tokenizer and checkpoint I/O."""
from .config import CogVLMConfig, EVAConfig, PRESETS, get_preset
from .tokenizer import LlamaTokenizer, build_tiny_tokenizer, load_tokenizer

__all__ = ["CogVLMConfig", "EVAConfig", "PRESETS", "get_preset", "LlamaTokenizer", "build_tiny_tokenizer",
           "load_tokenizer"]
