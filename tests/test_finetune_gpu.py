"""The GPU path: the default ZeRO-2 bf16 config through the launcher on the GPUs present.
Skipped without CUDA (not run on the CPU-only development machine)."""
import json

import pytest
import torch

from tests.test_finetune_run import launch, run_dir, synth  # noqa: F401  (synth is a fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_zero2_bf16_on_gpu_writes_a_loadable_checkpoint(synth, tmp_path):  # noqa: F811
    from models.cogvlm import CogVLMModel
    rc, out = launch("--train-data", synth / "train.jsonl", "--valid-data", synth / "test.jsonl",
                     "--train-iters", 6, "--batch-size", 4, "--log-interval", 2, "--skip-accuracy",
                     "--deepspeed-config", "zero2_bf16", "--num-gpus", 1, "--save", tmp_path)
    assert rc == 0, out[-3000:]
    ckpt = run_dir(tmp_path)
    assert (ckpt / "latest").read_text().strip() == "6"
    model, _ = CogVLMModel.from_pretrained(str(ckpt))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    losses = [json.loads(line)["loss"] for line in (ckpt / "train_log.jsonl").read_text().splitlines()
              if '"train"' in line]
    assert len(losses) == 6 and all(l == l for l in losses)  # finite
