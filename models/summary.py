"""`python -m models.summary [PRESET|CHECKPOINT ...]`: build each model on the meta device (no memory)
and print its tensor count and number count, overall and per mixin."""
import argparse
from collections import Counter

import torch

from .cogvlm import CogVLMModel
from .config import PRESETS, get_preset, load_model_config


def summarize(name: str) -> dict:
    config = get_preset(name).to_dict() if name in PRESETS else load_model_config(name)
    with torch.device("meta"):
        model = CogVLMModel(CogVLMModel.get_args(**config))
    state = model.state_dict()
    owners = Counter()
    for key, tensor in state.items():
        owner = key.split(".")[1] if key.startswith("mixins.") else "transformer"
        owners[owner] += tensor.numel()
    return {"name": name, "tensors": len(state), "numbers": sum(t.numel() for t in state.values()),
            "by_owner": dict(owners)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="*", default=list(PRESETS), help="preset names or checkpoint directories")
    for name in parser.parse_args(argv).models:
        s = summarize(name)
        parts = ", ".join(f"{k} {v:,}" for k, v in s["by_owner"].items())
        print(f"{s['name']}: {s['tensors']} tensors, {s['numbers']:,} numbers ({parts})")


if __name__ == "__main__":
    main()
