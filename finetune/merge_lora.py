"""Fold the LoRA adapters of a saved LoRA training checkpoint into the base weights, or export them for PEFT.

    python -m finetune.merge_lora CHECKPOINT_DIR [--out DIR] [--iteration N] [--save-format pt|safetensors]
    python -m finetune.merge_lora CHECKPOINT_DIR --export-peft OUT_DIR [--dtype bf16|fp16|fp32]

The first writes a plain CogVLM checkpoint in the official SAT layout (default: CHECKPOINT_DIR/merged)
that `CogVLMModel.from_pretrained` and `python -m inference.cli_demo --from_pretrained DIR` load directly.
The second writes the base model in the Hugging Face layout and the adapters, unmerged, as a PEFT adapter
in the same directory (`peft.PeftModel.from_pretrained(hf_model, OUT_DIR)`); see finetune/peft_export.py.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from finetune.checkpoint import load_training_checkpoint
from finetune.lora import merge_lora


def load_lora_checkpoint(path, iteration=None, trust: bool = False):
    """(model with adapters attached and loaded, iteration) from a LoRA training checkpoint, on CPU;
    trust: allow weights files that only load by running pickled code (--trust-checkpoint)."""
    from models.checkpoint import CheckpointError
    from models.config import load_model_config
    if "lora" not in load_model_config(str(path)):
        raise CheckpointError(f"{path}/model_config.json has no 'lora' entry: not a LoRA training checkpoint "
                              f"(it already loads with CogVLMModel.from_pretrained)")
    model, _, _, iteration = load_training_checkpoint(path, iteration=iteration, trust=trust)
    return model.eval(), iteration


def merge_checkpoint(path, out: Optional[Path] = None, iteration=None, save_format: str = "pt",
                     trust: bool = False) -> Path:
    """Merge and save; returns the output directory."""
    path = Path(path)
    out = Path(out) if out is not None else path / "merged"
    model, iteration = load_lora_checkpoint(path, iteration, trust)
    with torch.no_grad():
        merge_lora(model)
    model.save_pretrained(out, iteration=iteration, save_format=save_format)
    if (path / "tokenizer.model").is_file():
        shutil.copyfile(path / "tokenizer.model", out / "tokenizer.model")
    return out


def export_peft_checkpoint(path, out, iteration=None, dtype: Optional[str] = None, trust: bool = False) -> Path:
    """The base model in the HF layout plus the unmerged adapters as a PEFT adapter, in `out`."""
    from finetune.peft_export import export_peft
    model, _ = load_lora_checkpoint(path, iteration, trust)
    return export_peft(model, model.mixins["lora"].config, out, tokenizer_dir=path, dtype=dtype)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune.merge_lora", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a LoRA training checkpoint directory (model_config.json has 'lora')")
    p.add_argument("--out", default=None, help="output directory (default: CHECKPOINT/merged)")
    p.add_argument("--iteration", type=int, default=None, help="which saved iteration (default: latest)")
    p.add_argument("--save-format", choices=["pt", "safetensors"], default="pt",
                   help="merged weights as the official .pt or as safetensors (no pickle)")
    p.add_argument("--export-peft", metavar="OUT_DIR", default=None,
                   help="instead of merging: HF-layout base model + PEFT adapter (adapter_config.json, "
                        "adapter_model.safetensors) in OUT_DIR")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                   help="--export-peft: dtype of the base weights (default: as saved)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a checkpoint file that only loads by running pickled code (an old one; only "
                        "for files from a source you trust)")
    a = p.parse_args(argv)
    from models.checkpoint import CheckpointError
    try:
        if a.export_peft:
            out = export_peft_checkpoint(a.checkpoint, a.export_peft, a.iteration, a.dtype, a.trust_checkpoint)
        else:
            out = merge_checkpoint(a.checkpoint, a.out, a.iteration, a.save_format, a.trust_checkpoint)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"merge_lora: {e}", file=sys.stderr)
        return 2
    if a.export_peft:
        print(f"PEFT adapter + Hugging Face base model: {out}\nload it:  peft.PeftModel.from_pretrained("
              f"AutoModelForCausalLM.from_pretrained('{out}', trust_remote_code=True), '{out}')")
    else:
        print(f"merged checkpoint: {out}\nchat with it:  python -m inference.cli_demo --from_pretrained {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
