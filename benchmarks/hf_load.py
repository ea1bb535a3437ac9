"""Conversion time and host memory of the Hugging Face layout on a ~1B random configuration.

    python benchmarks/hf_load.py [--dtype bf16] [--work DIR] [--keep]

1. builds a random ~1.1B-parameter CogVLM (8 layers of width 2048, a 12-layer 224 px ViT), saves it
   in the SAT layout;
2. times `python -m models.convert --to hf` and `--to sat` (same process, wall clock);
3. in fresh processes, loads the HF directory directly with `CogVLMModel.from_pretrained(HF_DIR)`
   (in memory renaming, lazy safetensors) and, for comparison, the SAT directory, printing each
   one's peak RSS (after reading every weight once, so memory-mapped pages count) next to the size
   of one copy of the weights.
The ratio peak RSS / weights size is what matters: near 1 (plus the interpreter and torch, ~0.3 GB)
means one copy in memory. Numbers depend on machine load; note `uptime` with them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# ~1.1B parameters: LM 8 x (attention + experts + FFN + experts) ~ 0.81B, embeddings + head 0.13B,
# ViT 12 x 12.6M ~ 0.15B, projector 0.04B.
CONFIG = {
    "num_layers": 8, "hidden_size": 2048, "num_attention_heads": 16, "vocab_size": 32000,
    "inner_hidden_size": 5504, "max_sequence_length": 2048, "num_vision_expert_layers": 8,
    "tokenizer_type": "vicuna-7b-v1.5", "text_processor_version": "chat_old",
    "eva": {"num_layers": 12, "hidden_size": 1024, "num_attention_heads": 16, "inner_hidden_size": 4096,
            "image_size": [224, 224], "patch_size": 14},
}

LOAD = """
import json, sys, time, torch
sys.path.insert(0, {root!r})
from benchmarks.hf_load import peak_rss
from models.cogvlm import CogVLMModel
t = time.time()
model, args = CogVLMModel.from_pretrained({path!r}, overrides={overrides!r})
seconds = time.time() - t
params = sum(p.numel() for p in model.state_dict().values())
with torch.no_grad():  # read every weight once, so each page of a memory-mapped file is resident
    checksum = sum(float(p.float().sum()) if p.numel() < 1 << 20 else float(p.sum()) for p in model.state_dict().values())
print(json.dumps({{"seconds": seconds, "peak_rss": peak_rss(), "numbers": params,
                  "dtype": str(next(model.parameters()).dtype)}}))
"""

BASELINE = """
import json, sys
sys.path.insert(0, {root!r})
import torch, models.cogvlm  # the interpreter, torch, SAT and DeepSpeed: what every load pays first
from benchmarks.hf_load import peak_rss
print(json.dumps({{"peak_rss": peak_rss()}}))
"""


def peak_rss() -> int:
    """This process's peak resident set (VmHWM, bytes). Unlike getrusage's ru_maxrss it starts afresh at
    exec, so a child does not inherit the parent's high-water mark."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def dir_bytes(path: Path, suffixes) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in suffixes)


def run_child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_random_checkpoint(out: Path, dtype) -> int:
    import torch
    from models.cogvlm import CogVLMModel
    from models.config import CogVLMConfig, EVAConfig
    cfg = CogVLMConfig(**{**CONFIG, "eva": EVAConfig(**CONFIG["eva"])})
    torch.manual_seed(0)
    model = CogVLMModel(CogVLMModel.get_args(**cfg.to_dict()), params_dtype=dtype).to(dtype)  # mixins too
    numbers = sum(p.numel() for p in model.state_dict().values())
    model.save_pretrained(out)
    del model
    return numbers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="weights dtype (default bf16: 2.2 GB)")
    p.add_argument("--work", default=None, help="scratch directory (default: a temporary one, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    a = p.parse_args(argv)
    import torch
    from models.convert import hf_to_sat, sat_to_hf
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    work = Path(a.work or tempfile.mkdtemp(prefix="cogcot-hf-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}")
    try:
        t = time.time()
        numbers = build_random_checkpoint(work / "sat", dtype)
        print(f"random model: {numbers / 1e9:.2f} B numbers in {a.dtype}, built and saved in {time.time() - t:.1f} s")
        t = time.time()
        sat_to_hf(work / "sat", work / "hf", shard_size="1GB", progress=False)
        to_hf = time.time() - t
        t = time.time()
        hf_to_sat(work / "hf", work / "sat2")
        to_sat = time.time() - t
        weights = dir_bytes(work / "hf", {".safetensors"})
        print(f"convert --to hf: {to_hf:.1f} s ({weights / 1e9:.2f} GB written, "
              f"{len(list((work / 'hf').glob('*.safetensors')))} shards); convert --to sat: {to_sat:.1f} s")
        overrides = {"bf16": True} if a.dtype == "bf16" else None
        base = run_child(BASELINE.format(root=str(ROOT)))["peak_rss"]
        for name, path in (("HF dir (in-memory conversion)", work / "hf"), ("SAT dir", work / "sat")):
            r = run_child(LOAD.format(root=str(ROOT), path=str(path), overrides=overrides))
            print(f"from_pretrained({name}): {r['seconds']:.1f} s, peak RSS {r['peak_rss'] / 1e9:.2f} GB = "
                  f"{(r['peak_rss'] - base) / 1e9:.2f} GB over the {base / 1e9:.2f} GB of imports; "
                  f"one copy of the weights = {weights / 1e9:.2f} GB; "
                  f"(peak - imports) / weights = {(r['peak_rss'] - base) / weights:.2f}")
        print(f"this process peak RSS (build + conversions): {peak_rss() / 1e9:.2f} GB")
        print(f"load average after: {os.getloadavg()}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
