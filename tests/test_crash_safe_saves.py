"""Crash-safe saves and a resume that survives what a crash leaves: a real training run is SIGKILLed
inside a save and inside a step, then resumed; `latest` never names a partial iteration, no completed
step is lost, an unreadable newest iteration falls back to the newest intact one (reported by file), and
a partial last line of train_log.jsonl is tolerated."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def test_save_pretrained_publishes_complete_iterations(tiny_model, tmp_path):
    from models.checkpoint import read_latest
    out = tmp_path / "ckpt"
    tiny_model.save_pretrained(out, iteration=3)
    tiny_model.save_pretrained(out, iteration=3)  # a second save of the same iteration replaces it
    assert read_latest(out) == "3" and (out / "3" / "mp_rank_00_model_states.pt").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["3", "latest", "model_config.json"]  # no temporaries left


def test_resume_falls_back_past_an_unreadable_newest_iteration(tiny_model, tmp_path):
    from finetune.checkpoint import newest_intact_iteration
    out = tmp_path / "ckpt"
    for it in (2, 4, 6):
        tiny_model.save_pretrained(out, iteration=it)
    cut = out / "6" / "mp_rank_00_model_states.pt"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # e.g. a disk that filled up
    (out / "4" / "rng_state_rank000.pt").write_bytes(b"PK\x03\x04 not a zip")
    messages = []
    assert newest_intact_iteration(out, log=messages.append) == 2
    text = "\n".join(messages)
    assert f"{cut}: cannot be read" in text and str(out / "4" / "rng_state_rank000.pt") in text
    assert "falling back to iteration 2" in text
    assert newest_intact_iteration(out, log=lambda m: None) == 2  # reading changed nothing


def test_train_log_tolerates_a_partial_last_line(tmp_path):
    from finetune.step import History
    from finetune.train_log import read_records
    log = tmp_path / "train_log.jsonl"
    rows = [{"kind": "train", "step": s, "loss": 1.0 / s, "lr": 0.1} for s in (1, 2, 3)]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "train", "st')
    history = History().attach(str(log), keep_until=2)
    assert [r["step"] for r in history.train] == [1, 2]
    assert [r["step"] for r in read_records(log)[0]] == [1, 2] and log.read_text().endswith("\n")
    log.write_text(json.dumps(rows[0]) + "\n{oops\n" + json.dumps(rows[1]) + "\n")
    with pytest.raises(ValueError, match=f"{log}:2: not a JSON record"):
        History().attach(str(log), keep_until=5)


def _start(args, env=None):
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR"):
        full_env.pop(k, None)
    return subprocess.Popen([sys.executable, str(REPO / "finetune" / "finetune.py"), *map(str, args)], cwd=REPO,
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _kill_when(proc, needle: str, timeout=300) -> str:
    """Read the run's output until `needle` appears, then SIGKILL its whole process group."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if needle in line:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return "".join(seen)
    proc.wait(timeout=timeout)
    raise AssertionError(f"{needle!r} never appeared; output:\n{''.join(seen)[-3000:]}")


def test_sigkill_in_a_save_and_in_a_step_then_resume(tmp_path):
    from dataset.synth import generate
    generate(tmp_path / "data", n=16, seed=5, n_test=2, progress=False)
    common = ["--train-data", tmp_path / "data" / "train.jsonl", "--batch-size", 2, "--train-iters", 6,
              "--save-interval", 2, "--log-interval", 1, "--skip-accuracy", "--save", tmp_path / "s",
              "--experiment-name", "t"]
    # 1. killed inside the save of iteration 4: its files are written, not yet published
    out1 = _kill_when(_start(common, {"COGCOT_TEST_PAUSE_IN_SAVE": "4"}), "[test-hook] inside the save of iteration 4")
    ckpt = next(p for p in (tmp_path / "s").iterdir() if p.name.startswith("t"))
    assert (ckpt / "latest").read_text().strip() == "2"
    assert not (ckpt / "4").exists() and (ckpt / ".partial-4").is_dir()
    losses1 = {r["step"]: r["loss"] for r in map(json.loads, (ckpt / "train_log.jsonl").read_text().splitlines())
               if r.get("kind") == "train"}
    assert sorted(losses1) == [1, 2, 3, 4], out1[-2000:]
    # 2. resumed from 2; killed during step 6, after the save of 4 completed
    out2 = _kill_when(_start(common + ["--resume", ckpt]), "[train] step      5/6")
    assert "[resume] iteration 2:" in out2 and "[save] iteration 4" in out2, out2[-2000:]
    assert (ckpt / "latest").read_text().strip() == "4" and not (ckpt / ".partial-4").exists()
    with open(ckpt / "train_log.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 6, "lo')  # what a kill in the middle of a write leaves
    # 3. resumed from 4: runs to the end
    proc = _start(common + ["--resume", ckpt])
    out3 = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out3[-3000:]
    assert "[resume] iteration 4:" in out3 and "last line was cut short" in out3
    records = [json.loads(line) for line in (ckpt / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]  # every step once: none lost, none twice
    # steps 3-4 were redone after the first kill: with dropout off they repeat exactly
    for r in train[:4]:
        assert r["loss"] == pytest.approx(losses1[r["step"]], rel=1e-6), (r, losses1)
    assert (ckpt / "latest").read_text().strip() == "6"
    assert not [p.name for p in ckpt.iterdir() if p.name.startswith(".partial")]
    from models.cogvlm import CogVLMModel
    CogVLMModel.from_pretrained(str(ckpt))  # the final checkpoint loads
    assert torch.load(ckpt / "6" / "rng_state_rank000.pt", weights_only=True)["torch"].dtype == torch.uint8
