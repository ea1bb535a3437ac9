"""The LLaMA sentencepiece tokenizer with the HF-style interface the data and inference code use,
and a builder that trains a tiny one for `cogvlm-tiny` (nothing can be downloaded, so tests make their own)."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

import sentencepiece as spm

# The LLaVA-CoT stage tags, which the tiny tokenizer keeps as single pieces so the tiny model sees them
# whole. The format itself lives in dataset.cot_format; models may not import dataset (layout rule), so
# this is the tokenizer's own vocabulary list, and tests/test_cot_format.py checks it covers every tag.
STAGE_TAGS = ("<SUMMARY>", "</SUMMARY>", "<CAPTION>", "</CAPTION>",
              "<REASONING>", "</REASONING>", "<CONCLUSION>", "</CONCLUSION>")


class LlamaTokenizer:
    """Wraps a sentencepiece `tokenizer.model` (Vicuna/LLaMA: unk 0, bos 1, eos 2).

    `encode(text, add_special_tokens=True)` prepends BOS like HF's LlamaTokenizer; the text processors
    call it with `add_special_tokens=False` and add BOS/EOS themselves, as the official code does.
    """

    def __init__(self, model_file: Union[str, os.PathLike], pad_token_id: Optional[int] = None):
        model_file = str(model_file)
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f"tokenizer model not found: {model_file}")
        self.model_file = model_file
        self.sp = spm.SentencePieceProcessor(model_file=model_file)
        self.bos_token_id = self.sp.bos_id()
        self.eos_token_id = self.sp.eos_id()
        self.unk_token_id = self.sp.unk_id()
        sp_pad = self.sp.pad_id()
        # LLaMA has no pad piece; pad with unk (0), which is always inside the embedding table.
        self.pad_token_id = pad_token_id if pad_token_id is not None else (sp_pad if sp_pad >= 0 else self.unk_token_id)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        ids = self.sp.encode(text)
        return [self.bos_token_id] + ids if add_special_tokens else ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        size = self.vocab_size  # read once: a property call per token made decoding dominate data loading
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            special = {self.bos_token_id, self.eos_token_id, self.pad_token_id, self.unk_token_id}
            ids = [i for i in ids if i not in special and 0 <= i < size]
        else:
            ids = [i for i in ids if 0 <= i < size]
        return self.sp.decode(ids)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> List[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]

    def __repr__(self) -> str:
        return f"LlamaTokenizer({self.model_file!r}, vocab={self.vocab_size})"


# A small corpus for the tiny tokenizer: the words of questions about shapes, colours, counts,
# positions, charts and arithmetic, plus the stage tags, so that BPE learns them as whole pieces.
_TINY_WORDS = """
the a an of in on at to is are was were and or but not no yes how many which what where who why
image picture shows show there here this that these those it its with without from left right top
bottom middle center centre above below next between largest smallest biggest tallest highest lowest
circle circles square squares triangle triangles shape shapes colour color colours colors red green blue
yellow purple orange black white gray grey pink brown cyan count counts number numbers total left over
remove removed all any each every one two three four five six seven eight nine ten zero bar bars chart
value values label labels category categories highest lowest more less most least equal plus minus
option options answer answers question questions choose choice correct incorrect step steps first second
third then so therefore because since I will need to identify find look determine compare subtract add
after before summary caption reasoning conclusion response responses better best judge reason
shortest star kind result relative them has makes gives shows So What Where Which From Remove No That Counting ,
A B C D E
"""


def _tiny_corpus(extra: Iterable[str] = ()) -> List[str]:
    words = _TINY_WORDS.split()
    lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    lines += [f"There are {n} shapes. {n} - {m} = {n - m}. The answer is {chr(65 + n % 4)}."
              for n in range(0, 13) for m in range(0, n + 1)]
    lines += [f"{t} I will look at the image. {t}" for t in STAGE_TAGS]
    lines += ["Question: How many red circles are there? Answer:",
              "Options: A. 1 B. 2 C. 3 D. 4", "The bar for blue is the tallest."]
    lines += list(extra)
    return lines * 3


def build_tiny_tokenizer(out_path: Union[str, os.PathLike], vocab_size: int = 1024,
                         extra_text: Iterable[str] = ()) -> LlamaTokenizer:
    """Train a deterministic byte-fallback BPE sentencepiece model with LLaMA's special ids.

    Takes a second or two; the stage tags are user-defined symbols (single tokens).
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_tiny_corpus(extra_text)),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        byte_fallback=True,
        character_coverage=1.0,
        user_defined_symbols=list(STAGE_TAGS),
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    tmp = out_path.with_suffix(out_path.suffix + f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, out_path)  # atomic: concurrent builders never see a half-written model
    return LlamaTokenizer(out_path)


def default_cache_dir() -> Path:
    return Path(os.environ.get("COGCOT_CACHE", Path.home() / ".cache" / "cogcot"))


def tiny_tokenizer_path(vocab_size: int = 1024) -> Path:
    """Where the tiny tokenizer lives; built on first use."""
    path = default_cache_dir() / f"tiny-tokenizer-{vocab_size}.model"
    if not path.exists():
        build_tiny_tokenizer(path, vocab_size=vocab_size)
    return path


def load_tokenizer(path_or_name: Union[str, os.PathLike, None]) -> LlamaTokenizer:
    """Load `tokenizer.model` from a file, from a directory holding one, or `tiny` for the built-in one."""
    if path_or_name in (None, "tiny", "cogvlm-tiny"):
        return LlamaTokenizer(tiny_tokenizer_path())
    path = Path(path_or_name)
    if path.is_dir():
        path = path / "tokenizer.model"
    if not path.is_file():
        raise FileNotFoundError(
            f"no tokenizer at {path_or_name}: give a sentencepiece tokenizer.model (the Vicuna-7B v1.5 "
            f"one for the official checkpoints), a folder holding one, or 'tiny'")
    return LlamaTokenizer(path)


def tokenizer_for(model_path_or_preset: Union[str, os.PathLike], tokenizer_type: Optional[str] = None,
                  override: Optional[Union[str, os.PathLike]] = None) -> LlamaTokenizer:
    """The tokenizer belonging to a checkpoint: `override` if given, else `tokenizer.model` inside the
    checkpoint directory, else the built-in tiny one when the model's tokenizer_type is `tiny`."""
    if override:
        return load_tokenizer(override)
    path = Path(model_path_or_preset)
    if path.is_dir() and (path / "tokenizer.model").is_file():
        return LlamaTokenizer(path / "tokenizer.model")
    if tokenizer_type in (None, "tiny") and (str(model_path_or_preset) == "cogvlm-tiny" or tokenizer_type == "tiny"):
        return load_tokenizer("tiny")
    raise FileNotFoundError(
        f"no tokenizer for {model_path_or_preset} (tokenizer_type {tokenizer_type!r}): put the Vicuna-7B v1.5 "
        f"sentencepiece tokenizer.model into the checkpoint directory, or pass --tokenizer PATH")
