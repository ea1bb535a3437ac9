"""Fine-tuning through the DeepSpeed launcher on CPU, a few steps of cogvlm-tiny on synthetic data:
end to end (loadable checkpoint, logs, summary), exact resume, 2-process data parallelism equal to
one process with the same global batch, LoRA with its merged checkpoint, and errors before training."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from dataset.synth import generate
    out = tmp_path_factory.mktemp("synth")
    generate(out, n=48, seed=5, n_test=8, progress=False)
    return out


def launch(*args, timeout=300, env=None):
    """Run `python -m finetune.launch ARGS` (what finetune/run.sh runs after setting up the venv)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    full_env.pop("COGCOT_TRAIN_DATA", None)
    proc = subprocess.run([sys.executable, "-m", "finetune.launch", *map(str, args)], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def quick(synth, save, *extra, valid=False):
    """Options of a short CPU run on the synthetic data."""
    args = ["--train-data", synth / "train.jsonl", "--save", save, "--batch-size", 2, "--log-interval", 2,
            "--skip-accuracy", "--experiment-name", "t"]
    if valid:
        args += ["--valid-data", synth / "test.jsonl"]
    return args + list(extra)


def run_dir(save: Path) -> Path:
    dirs = [d for d in Path(save).iterdir() if d.is_dir() and d.name != "runs"]
    assert len(dirs) == 1, dirs
    return dirs[0]


def module_state(ckpt: Path, iteration: int) -> dict:
    return torch.load(ckpt / str(iteration) / "mp_rank_00_model_states.pt", map_location="cpu",
                      weights_only=True)["module"]


def initial_tiny():
    """cogvlm-tiny as a run with the default --seed 1234 builds it before training."""
    from models.cogvlm import CogVLMModel
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        return CogVLMModel.from_pretrained("cogvlm-tiny")[0]


def train_log(ckpt: Path, kind="train"):
    recs = [json.loads(line) for line in (ckpt / "train_log.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in recs if r["kind"] == kind]


def test_end_to_end_writes_a_loadable_checkpoint(synth, tmp_path):
    from models.cogvlm import CogVLMModel
    rc, out = launch("--train-data", synth / "train.jsonl", "--valid-data", synth / "test.jsonl",
                     "--eval-data", synth / "test.tsv", "--accuracy-limit", 4, "--accuracy-max-new-tokens", 6,
                     "--train-iters", 4, "--batch-size", 2, "--eval-interval", 2, "--log-interval", 2,
                     "--save", tmp_path)
    assert rc == 0, out[-3000:]
    ckpt = run_dir(tmp_path)
    for name in ("model_config.json", "tokenizer.model", "latest", "4/mp_rank_00_model_states.pt",
                 "loss_curve.png", "finetune_summary.json"):
        assert (ckpt / name).is_file(), name
    assert (ckpt / "latest").read_text().strip() == "4"
    assert list((tmp_path / "runs" / ckpt.name).glob("events.out.tfevents*")), "no TensorBoard events"
    assert [r["step"] for r in train_log(ckpt)] == [1, 2, 3, 4]
    assert [r["step"] for r in train_log(ckpt, "valid")] == [2, 4]
    assert "[train] step      4/4 | loss" in out and "samples/s" in out and "ETA" in out
    assert "held-out accuracy, before -> after" in out
    assert f"python -m inference.cli_demo --from_pretrained {ckpt}" in out
    summary = json.loads((ckpt / "finetune_summary.json").read_text())
    assert summary["iteration"] == 4 and summary["accuracy_after"]["n"] == 4
    model, args = CogVLMModel.from_pretrained(str(ckpt))
    initial = initial_tiny()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, initial.state_dict()[k])]
    assert len(changed) > 0.9 * len(initial.state_dict())  # full fine-tuning moved (almost) every weight


def test_resume_continues_exactly(synth, tmp_path):
    """20 steps straight == 10 steps, checkpoint, resume for 10 (weights, optimizer, dropout RNG, data)."""
    dropout = ["--hidden-dropout", 0.1, "--attention-dropout", 0.1]  # the RNG must continue too
    rc, out = launch(*quick(synth, tmp_path / "a", "--train-iters", 20, "--save-interval", 10, *dropout))
    assert rc == 0, out[-3000:]
    straight = run_dir(tmp_path / "a")
    assert sorted(p.name for p in straight.iterdir() if p.name.isdigit()) == ["10", "20"]
    # the run as it stood after 10 steps
    resumed = tmp_path / "b" / straight.name
    shutil.copytree(straight, resumed, ignore=shutil.ignore_patterns("20"))
    (resumed / "latest").write_text("10")
    rc, out = launch(*quick(synth, tmp_path / "b", "--train-iters", 20, "--resume", resumed, *dropout))
    assert rc == 0, out[-3000:]
    assert "skipping 10 micro-batches" in out
    a, b = module_state(straight, 20), module_state(resumed, 20)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert [r["loss"] for r in train_log(straight)] == [r["loss"] for r in train_log(resumed)]


def test_two_processes_match_one_with_the_same_global_batch(synth, tmp_path):
    """gloo data parallelism: 2 x 2 samples per step gives the loss curve of 1 x 4 samples."""
    common = ["--train-iters", 6]  # dropout is off by default (with it the processes draw different masks)
    rc, out1 = launch(*quick(synth, tmp_path / "one", *common, "--batch-size", 4, "--num-gpus", 1))
    assert rc == 0, out1[-3000:]
    rc, out2 = launch(*quick(synth, tmp_path / "two", *common, "--batch-size", 2, "--num-gpus", 2))
    assert rc == 0, out2[-3000:]
    one, two = run_dir(tmp_path / "one"), run_dir(tmp_path / "two")
    l1, l2 = [r["loss"] for r in train_log(one)], [r["loss"] for r in train_log(two)]
    assert len(l1) == len(l2) == 6
    assert l1[-1] < l1[0]
    for x, y in zip(l1, l2):
        assert abs(x - y) <= 1e-4 * abs(x), (l1, l2)
    a, b = module_state(one, 6), module_state(two, 6)
    for k in a:
        x, y = a[k], b[k]
        if k.endswith("query_key_value.bias"):
            # The key bias shifts every score of a query equally, so softmax makes its gradient exactly
            # zero; only rounding noise is left, and Adam scales noise up to lr-sized steps. Compare the
            # query and value parts.
            third = x.shape[0] // 3  # [3 * hidden] = q | k | v
            x, y = torch.cat([x[:third], x[2 * third:]]), torch.cat([y[:third], y[2 * third:]])
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-5, msg=k)


def test_lora_run_merges_into_a_plain_checkpoint(synth, tmp_path):
    from models.cogvlm import CogVLMModel
    from finetune.parts import part_parameters
    rc, out = launch(*quick(synth, tmp_path, "--train-iters", 3, "--finetune-mode", "lora", "--lora-rank", 4,
                            "--lr", "0.01"))
    assert rc == 0, out[-3000:]
    ckpt = run_dir(tmp_path)
    assert json.loads((ckpt / "model_config.json").read_text())["lora"]["rank"] == 4
    assert f"python -m inference.cli_demo --from_pretrained {ckpt / 'merged'}" in out
    lora_line = next(line for line in out.splitlines() if line.strip().startswith("lora "))
    total_line = next(line for line in out.splitlines() if line.strip().startswith("total "))
    assert lora_line.split()[1] == total_line.split()[1]  # only the adapters train
    merged, _ = CogVLMModel.from_pretrained(str(ckpt / "merged"))
    base = initial_tiny()
    parts_m, parts_b = part_parameters(merged), part_parameters(base)
    for part in ("vit", "projector"):  # not LoRA targets: untouched
        assert all(torch.equal(p, q) for p, q in zip(parts_m[part], parts_b[part])), part
    for part in ("language", "vision_experts"):  # LoRA targets: the merged deltas moved them
        assert any(not torch.equal(p, q) for p, q in zip(parts_m[part], parts_b[part])), part


def test_bad_data_path_or_config_fails_before_training(synth, tmp_path):
    rc, out = launch("--train-data", tmp_path / "nope.jsonl", "--save", tmp_path / "s", timeout=120)
    assert rc == 2 and "nope.jsonl: no such file" in out
    assert "deepspeed.launcher" not in out and not (tmp_path / "s").exists()
    bad = tmp_path / "ds.json"
    bad.write_text('{"zero_optimization": {"stage": 7}}')
    rc, out = launch("--train-data", synth / "train.jsonl", "--deepspeed-config", bad, "--save", tmp_path / "s",
                     timeout=120)
    assert rc == 2 and "stage must be 0-3" in out and "needs an 'optimizer' section" in out
    assert not (tmp_path / "s").exists()
    # the entry point itself checks too (a launcher of one's own, or a typo in a hostfile run)
    proc = subprocess.run([sys.executable, str(REPO / "finetune" / "finetune.py"), "--train-data",
                           tmp_path / "nope.jsonl"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "nope.jsonl: no such file" in proc.stderr


def test_data_counts_at_start_and_no_samples_without_a_traceback(tmp_path):
    """The start of training reports kept/truncated/dropped counts per file; a data file with nothing usable
    stops the run with 'no samples in FILE' (an empty one before anything starts), never a traceback."""
    from PIL import Image
    Image.new("RGB", (20, 16), (200, 30, 30)).save(tmp_path / "a.png")

    def record(rid, answer, image="a.png"):
        return json.dumps({"id": rid, "image": image, "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": answer}]})

    train = tmp_path / "train.jsonl"
    train.write_text("\n".join([record("s1", "red"), record("long", "red " * 80), record("s2", "red")]) + "\n")
    rejected = tmp_path / "valid.jsonl"
    rejected.write_text(record("v1", "red", image="gone.png") + "\n")
    rc, out = launch("--train-data", train, "--valid-data", rejected, "--max-length", 100, "--truncation", "drop",
                     "--save", tmp_path / "s", "--train-iters", 1, "--batch-size", 1, "--skip-accuracy")
    assert rc != 0 and "Traceback" not in out, out[-3000:]
    assert f"[data] {train}: 2 samples of 3 records read, 0 truncated to max_length 100" in out
    assert "1 longer than max_length dropped (truncation drop)" in out
    assert f"no samples in {rejected}: no usable samples (1 record(s) read, 1 rejected); first problem:" in out
    assert "missing image" in out
    # An empty file is refused by the checks the launcher and the entry point run before anything starts.
    from finetune import arguments
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    opts, _ = arguments.parse(["--train-data", str(empty), "--valid-data", str(train)], launcher=True)
    with pytest.raises(arguments.ConfigError) as info:
        arguments.check(opts, cuda=False, launcher=True)
    assert info.value.problems == [f"--train-data {empty}: no samples in {empty} (the file is empty)"]
