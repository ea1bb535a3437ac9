"""Short real runs of what had no test: --epochs, resuming a LoRA run, and the ZeRO-3 weight gather on
save (DeepSpeed writes only partitions; the official file must hold the full weights). One process, no
launcher (finetune/finetune.py makes a world of one), cogvlm-tiny, a handful of steps."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from dataset.synth import generate
    out = tmp_path_factory.mktemp("synth")
    generate(out, n=8, seed=5, n_test=2, progress=False)
    return out / "train.jsonl"


def train(*args, timeout=400):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, str(REPO / "finetune" / "finetune.py"), "--skip-accuracy",
                           "--batch-size", "2", "--log-interval", "1", "--experiment-name", "t", *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout + proc.stderr


def run_dir(save):
    return next(p for p in Path(save).iterdir() if p.name.startswith("t"))


def steps(ckpt):
    return [r["step"] for r in map(json.loads, (ckpt / "train_log.jsonl").read_text().splitlines())
            if r["kind"] == "train"]


def test_epochs_sets_the_number_of_steps(data, tmp_path):
    train("--train-data", data, "--epochs", 1, "--save", tmp_path)  # 8 samples / batch 2 = 4 steps
    ckpt = run_dir(tmp_path)
    assert steps(ckpt) == [1, 2, 3, 4] and (ckpt / "latest").read_text().strip() == "4"


def test_a_lora_run_resumes_with_its_adapters(data, tmp_path):
    from finetune.checkpoint import load_training_checkpoint
    lora = ["--finetune-mode", "lora", "--lora-rank", 2, "--lr", "0.01", "--train-data", data, "--save", tmp_path]
    train(*lora, "--train-iters", 2)
    ckpt = run_dir(tmp_path)
    at2, _, config2, _ = load_training_checkpoint(ckpt, iteration=2)
    out = train(*lora, "--train-iters", 4, "--resume", ckpt)
    assert "[resume] iteration 2:" in out and steps(ckpt) == [1, 2, 3, 4]
    at4, _, config4, _ = load_training_checkpoint(ckpt, iteration=4)
    assert config4.rank == config2.rank == 2
    a2, a4 = at2.mixins["lora"].state_dict(), at4.mixins["lora"].state_dict()
    assert any(not torch.equal(a2[k], a4[k]) for k in a2), "the resumed run did not train the adapters"
    base2 = {k: v for k, v in at2.state_dict().items() if not k.startswith("mixins.lora.")}
    base4 = {k: v for k, v in at4.state_dict().items() if not k.startswith("mixins.lora.")}
    assert all(torch.equal(base2[k], base4[k]) for k in base2), "the frozen base weights moved after the resume"
    assert (ckpt / "merged" / "latest").read_text().strip() == "4"


def test_zero3_save_gathers_the_full_weights(data, tmp_path):
    from models.cogvlm import CogVLMModel
    config = json.loads((REPO / "finetune" / "configs" / "cpu.json").read_text())
    config["zero_optimization"] = {"stage": 3}
    config["bf16"] = {"enabled": True}  # DeepSpeed's ZeRO on CPU saves with bf16 (see DESIGN)
    (tmp_path / "z3.json").write_text(json.dumps(config))
    train("--train-data", data, "--train-iters", 2, "--deepspeed-config", tmp_path / "z3.json", "--save", tmp_path / "s")
    ckpt = run_dir(tmp_path / "s")
    assert list((ckpt / "2").glob("zero_pp_rank_0_*model_states.pt")), "not a ZeRO-3 checkpoint"
    state = torch.load(ckpt / "2" / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        initial, _ = CogVLMModel.from_pretrained("cogvlm-tiny")
    expected = initial.state_dict()
    assert state.keys() == expected.keys()
    assert all(state[k].shape == expected[k].shape for k in state)  # full tensors, not partitions
    assert sum(not torch.equal(state[k].float(), expected[k].float().to(state[k].dtype).float()) for k in state) > 0
    model, _ = CogVLMModel.from_pretrained(str(ckpt))
    assert torch.equal(model.mixins["lm"].lm_head.weight, state["mixins.lm.lm_head.weight"].to(model.mixins["lm"].lm_head.weight.dtype))
