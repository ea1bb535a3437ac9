"""Shared fixtures: tiny tokenizers and random-weight models built locally (no network, no downloads)."""
import os

import pytest
import torch

# Keep the tiny tokenizer cache inside the test session, never in the user's home.
os.environ.setdefault("COGCOT_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "cogcot"))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A 1024-piece byte-fallback BPE sentencepiece tokenizer with LLaMA ids (unk 0, bos 1, eos 2)."""
    from models.tokenizer import build_tiny_tokenizer
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model")
