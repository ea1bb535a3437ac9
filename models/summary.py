"""`python -m models.summary [PRESET|CHECKPOINT ...]`: build each model on the meta device (no memory)
and print its tensor count and number count, overall and per mixin.

`python -m models.summary --hf PRESET|CHECKPOINT`: list the model's tensors by their Hugging Face
(`cogvlm-*-hf`) names, with shapes, as `python -m models.convert --to hf` would write them."""
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


def hf_names(name: str) -> dict:
    """{HF name: shape} of a preset or checkpoint directory, in the order the SAT model holds them."""
    from .convert import expected_shapes, sat_to_hf_names
    config = get_preset(name).to_dict() if name in PRESETS else load_model_config(name)
    shapes = expected_shapes(config)
    plan = sat_to_hf_names(list(shapes), int(config["num_layers"]), name)
    return {hf: tuple(shapes[sat]) for hf, sat in plan.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(PRESETS), help="preset names or checkpoint directories")
    parser.add_argument("--hf", action="store_true", help="list the Hugging Face tensor names and shapes")
    args = parser.parse_args(argv)
    if args.hf:
        for name in args.models:
            names = hf_names(name)
            print(f"# {name}: {len(names)} tensors in the Hugging Face layout")
            for hf, shape in sorted(names.items()):
                print(f"{hf}\t{list(shape)}")
        return
    for name in args.models:
        s = summarize(name)
        parts = ", ".join(f"{k} {v:,}" for k, v in s["by_owner"].items())
        print(f"{s['name']}: {s['tensors']} tensors, {s['numbers']:,} numbers ({parts})")


if __name__ == "__main__":
    main()
