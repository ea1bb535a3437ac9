"""Tokenizer files beside the weights: `tokenizer.model` in both layouts, plus the
`tokenizer_config.json` and `special_tokens_map.json` that `transformers.LlamaTokenizer` reads in the
Hugging Face layout (special pieces taken from the sentencepiece model itself)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Optional, Union

TOKENIZER_FILE = "tokenizer.model"


def special_pieces(model_file: Union[str, Path]) -> dict:
    """{'bos_token': '<s>', 'eos_token': '</s>', 'unk_token': '<unk>'} as the model file names them."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    return {"bos_token": sp.id_to_piece(sp.bos_id()), "eos_token": sp.id_to_piece(sp.eos_id()),
            "unk_token": sp.id_to_piece(sp.unk_id())}


def write_hf_tokenizer_config(out_dir: Union[str, Path], model_max_length: int) -> None:
    out_dir = Path(out_dir)
    special = special_pieces(out_dir / TOKENIZER_FILE)
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "legacy": True, "model_max_length": model_max_length,
              "pad_token": None, "padding_side": "right", "sp_model_kwargs": {}, **special}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def copy_tokenizer_files(src_dir: Union[str, Path], out_dir: Union[str, Path], hf_layout: bool,
                         model_max_length: Optional[int] = None) -> bool:
    """Copy tokenizer.model (and write the HF tokenizer configs); False, with a note, when src has none."""
    src = Path(src_dir) / TOKENIZER_FILE
    if not src.is_file():
        print(f"[convert] note: {src_dir} holds no {TOKENIZER_FILE}; copy the model's tokenizer (Vicuna-7B v1.5 "
              f"for the official models) into {out_dir}", file=sys.stderr)
        return False
    dst = Path(out_dir) / TOKENIZER_FILE
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    if hf_layout:
        write_hf_tokenizer_config(out_dir, model_max_length or 2048)
    return True
