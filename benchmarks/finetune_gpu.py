"""Fine-tuning throughput on GPUs: samples/s, tokens/s and model FLOPs utilisation (MFU).

    python benchmarks/finetune_gpu.py                                   # cogvlm-tiny, 1 GPU, ZeRO-2 bf16
    python benchmarks/finetune_gpu.py --model cogvlm-chat-v1.1 --finetune-mode lora --num-gpus 8 \
        --batch-size 4 --steps 30 --peak-tflops 989

Runs `finetune.launch` (the same path as `bash finetune/run.sh`) for a few steps on synthetic data
made at the model's image size, then reads the measured throughput from the run's summary (step time
between optimizer steps, validation and saving excluded) and estimates MFU:

    FLOPs per token = k * (language-path weights used per token) + attention  (k = 6 full, 4 LoRA/frozen)
                    + per image: k_vit * ViT weights * patches              (k_vit = 6 trained, 2 frozen)
    MFU = tokens/s * FLOPs per token / (GPUs * peak bf16 FLOP/s)

The 17B presets build with random weights when no checkpoint is given (the speed is the same).
Not run on the CPU-only development machine: it exits with a message when CUDA is absent.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(override):
    if override:
        return override
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")


def flops_per_token(config, seq_len: int, image_tokens: int, lora: bool, vit_trained: bool) -> float:
    """Training FLOPs per token of a CogVLM config (matmuls only; the image's ViT cost spread over the sequence)."""
    h, f, layers, v = config.hidden_size, config.inner_hidden_size, config.num_layers, config.vocab_size
    per_layer = 4 * h * h + 3 * h * f  # QKV + dense, SwiGLU (gate, up, down): one expert path per token
    k = 4 if lora else 6
    dense = k * (layers * per_layer + h * v)
    attention = 3 * 4 * layers * seq_len * h / 2  # QK^T and AV, causal half, forward + backward
    e = config.eva
    vit_params = e.num_layers * (4 * e.hidden_size ** 2 + 2 * e.hidden_size * e.inner_hidden_size)
    vit = (6 if vit_trained else 2) * vit_params * e.num_patches / seq_len
    return dense + attention + vit


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cogvlm-tiny")
    p.add_argument("--finetune-mode", default="full", choices=["full", "lora"])
    p.add_argument("--deepspeed-config", default="zero2_bf16")
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--n", type=int, default=2000, help="synthetic training items")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of one GPU")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more finetune options")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("finetune_gpu: needs CUDA GPUs; nothing measured on this machine")
        return 0
    from dataset.synth import generate
    from finetune import launch
    from models.config import PRESETS
    config = PRESETS[a.model] if a.model in PRESETS else None
    if config is None:
        from models.config import CogVLMConfig, load_model_config
        config = CogVLMConfig.from_dict(load_model_config(a.model))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "data", n=a.n, seed=0, n_test=16, image_size=config.eva.image_size[0], progress=False)
        argv = ["--from-pretrained", a.model, "--finetune-mode", a.finetune_mode, "--deepspeed-config",
                a.deepspeed_config, "--num-gpus", str(a.num_gpus), "--batch-size", str(a.batch_size),
                "--train-iters", str(a.steps), "--train-data", str(tmp / "data" / "train.jsonl"),
                "--skip-accuracy", "--log-interval", "10", "--save", str(tmp / "ckpt"), *a.extra]
        rc = launch.main(argv)
        if rc:
            return rc
        run = next(d for d in (tmp / "ckpt").iterdir() if d.is_dir() and d.name != "runs")
        summary = json.loads((run / "finetune_summary.json").read_text())
    sps, tps = summary["samples_per_second"], summary["tokens_per_second"]
    seq = tps / sps
    fpt = flops_per_token(config, seq, config.image_length, a.finetune_mode == "lora", a.finetune_mode == "full")
    mfu = tps * fpt / (a.num_gpus * peak_tflops(a.peak_tflops) * 1e12)
    print(f"{a.model} {a.finetune_mode} on {a.num_gpus} x {torch.cuda.get_device_name()}: "
          f"{sps:.1f} samples/s, {tps:.0f} tokens/s (mean {seq:.0f} tokens/sample), "
          f"{fpt / 1e9:.2f} GFLOP/token, MFU {100 * mfu:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
