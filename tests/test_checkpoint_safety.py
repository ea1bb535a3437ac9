"""No code runs from a checkpoint: every .pt is read weights-only; a file whose pickle would run code (here:
create a file) is refused by from_pretrained, merge_lora and resume with a message naming it and
--trust-checkpoint, and loads only with that flag. Official / DeepSpeed-written layouts load as they are."""
import argparse
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import STATE_FILE, UntrustedCheckpointError

REPO = Path(__file__).resolve().parent.parent


class CreatesFile:
    """Unpickling this object opens (creates) `path`: stands for any code a pickle can run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant(weights_file: Path, marker: Path) -> None:
    """Rewrite a checkpoint's weights file with a payload that creates `marker` when unpickled."""
    payload = torch.load(weights_file, weights_only=True)
    payload["note"] = CreatesFile(marker)
    torch.save(payload, weights_file)


def test_from_pretrained_refuses_a_pickle_that_runs_code(sat_dir, tmp_path):
    from models.cogvlm import CogVLMModel
    marker = tmp_path / "pwned"
    weights = sat_dir / "1" / STATE_FILE
    plant(weights, marker)
    with pytest.raises(UntrustedCheckpointError) as info:
        CogVLMModel.from_pretrained(str(sat_dir))
    assert str(weights) in str(info.value) and "--trust-checkpoint" in str(info.value)
    assert not marker.exists()
    model, _ = CogVLMModel.from_pretrained(str(sat_dir), trust_checkpoint=True)  # the flag allows it
    assert marker.exists(), "the planted pickle did not run: the refusal above proves nothing"
    assert model.mixins["lm"].lm_head.weight.shape[0] > 0


def test_cli_demo_names_the_file_and_the_flag(sat_dir, tmp_path):
    marker = tmp_path / "pwned"
    plant(sat_dir / "1" / STATE_FILE, marker)
    proc = subprocess.run([sys.executable, "-m", "inference.cli_demo", "--from_pretrained", str(sat_dir)],
                          input="", capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode != 0 and "--trust-checkpoint" in proc.stderr and STATE_FILE in proc.stderr, proc.stderr
    assert not marker.exists()


def test_merge_lora_refuses_then_trusts(lora_checkpoint, tmp_path):
    from finetune.merge_lora import main
    ckpt, _ = lora_checkpoint
    marker = tmp_path / "pwned"
    plant(ckpt / "5" / STATE_FILE, marker)
    assert main([str(ckpt), "--out", str(tmp_path / "m")]) == 2
    assert not marker.exists() and not (tmp_path / "m").exists()
    assert main([str(ckpt), "--out", str(tmp_path / "m"), "--trust-checkpoint"]) == 0
    assert marker.exists() and (tmp_path / "m" / "latest").is_file()


def test_resume_reads_trainer_and_deepspeed_files_weights_only(lora_checkpoint, tmp_path):
    """read_trainer_state, load_training_checkpoint and every file DeepSpeed's load_checkpoint reads go
    through the weights-only loader (DeepSpeed itself would unpickle with weights_only=False)."""
    from finetune.checkpoint import load_training_checkpoint, read_trainer_state, restore_training_state
    ckpt, _ = lora_checkpoint
    marker = tmp_path / "pwned"
    plant(ckpt / "5" / STATE_FILE, marker)
    for call in (lambda: read_trainer_state(ckpt), lambda: load_training_checkpoint(ckpt)):
        with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
            call()
    assert not marker.exists()

    class Engine:  # what DeepSpeed's load_checkpoint does with the files: checkpoint_engine.load(path)
        def __init__(self):
            self.checkpoint_engine = self

        def load(self, path, map_location=None):
            return torch.load(path, map_location=map_location, weights_only=False)

        def load_checkpoint(self, load_dir, tag, **kw):
            return self.checkpoint_engine.load(Path(load_dir) / tag / STATE_FILE), {}

    engine = Engine()
    with pytest.raises(UntrustedCheckpointError):
        restore_training_state(engine, ckpt, 5)
    assert not marker.exists() and engine.checkpoint_engine is engine  # the engine is given back as it was
    restore_training_state(engine, ckpt, 5, trust=True)
    assert marker.exists()


def test_finetune_resume_refuses_with_a_message(lora_checkpoint, tmp_path, write_records):
    ckpt, _ = lora_checkpoint
    marker = tmp_path / "pwned"
    plant(ckpt / "5" / STATE_FILE, marker)
    data = write_records([{"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                               {"from": "gpt", "value": "A"}]}], images=("a.png",))
    proc = subprocess.run([sys.executable, str(REPO / "finetune" / "finetune.py"), "--train-data", str(data),
                           "--resume", str(ckpt), "--train-iters", "6", "--skip-accuracy"],
                          capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{ckpt / '5' / STATE_FILE}: refused" in proc.stderr and "--trust-checkpoint" in proc.stderr
    assert not marker.exists()


def test_sat_and_deepspeed_extras_load_without_trust(sat_dir):
    """What SAT and DeepSpeed store beside the weights (numpy RNG state, an args Namespace, DeepSpeed's
    loss scaler and ZeRO stage; the legacy serialization too) is data, not code: it loads weights-only."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from finetune.checkpoint import deepspeed_data_globals
    from models.checkpoint import load_file
    from models.cogvlm import CogVLMModel
    f = sat_dir / "1" / STATE_FILE
    payload = torch.load(f, weights_only=True)
    payload.update(iteration=1, random_rng_state=random.getstate(), np_rng_state=np.random.get_state(),
                   torch_rng_state=torch.get_rng_state(), args=argparse.Namespace(lr=1e-5, layers=[1, 2]))
    torch.save(payload, f, _use_new_zipfile_serialization=False)
    model, _ = CogVLMModel.from_pretrained(str(sat_dir))
    assert torch.equal(model.mixins["lm"].lm_head.weight, payload["module"]["mixins.lm.lm_head.weight"])
    optim = sat_dir / "optim.pt"
    torch.save({"optimizer_state_dict": {"loss_scaler": LossScaler(4.0), "zero_stage": ZeroStageEnum(2)}}, optim)
    with pytest.raises(UntrustedCheckpointError):
        load_file(optim)  # DeepSpeed's classes are allowed only where DeepSpeed's files are read
    state = load_file(optim, data_globals=deepspeed_data_globals())["optimizer_state_dict"]
    assert state["loss_scaler"].cur_scale == 4.0 and state["zero_stage"] == ZeroStageEnum(2)


def test_a_damaged_file_is_named(sat_dir):
    from models.checkpoint import CheckpointError
    from models.cogvlm import CogVLMModel
    f = sat_dir / "1" / STATE_FILE
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"{f}: cannot be read"):
        CogVLMModel.from_pretrained(str(sat_dir))


def test_sat_to_hf_refuses_then_trusts(sat_dir, tmp_path):
    from models.convert import main
    marker = tmp_path / "pwned"
    plant(sat_dir / "1" / STATE_FILE, marker)
    assert main(["--to", "hf", str(sat_dir), str(tmp_path / "hf")]) != 0
    assert not marker.exists()
    assert main(["--to", "hf", str(sat_dir), str(tmp_path / "hf"), "--trust-checkpoint"]) == 0
    assert marker.exists() and (tmp_path / "hf" / "config.json").is_file()
