"""A few `--stage pretrain` steps end to end through the launcher on CPU: a data mix of a record file
(captions, an interleaved document, plain text) and tar shards, with the per-source counts and the
attention monitor in the training log, a checkpoint and the heatmap."""
import json

import pytest
from PIL import Image

from dataset.shards import write_shards
from models.config import PRESETS
from tests.test_finetune_run import launch, run_dir, train_log


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Captions, interleaved documents and plain text with tiny PNGs: (folder, captions file, mixed file)."""
    out = tmp_path_factory.mktemp("pretrain")
    for i in range(4):
        Image.new("RGB", (24, 24), (60 * i, 120, 200 - 40 * i)).save(out / f"img{i}.png")
    colours = ["red", "green", "blue", "grey"]
    caps = [{"image": f"img{i % 4}.png", "text": f"a picture in {colours[i % 4]} number {i}"} for i in range(12)]
    (out / "caps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in caps))
    mixed = caps[:4] + [{"images": ["img0.png", "img1.png"], "text": "one <image> and two <image> end"},
                        {"text": "plain text with no image at all"}]
    (out / "mixed.json").write_text(json.dumps(mixed))
    write_shards([str(out / "caps.jsonl")], str(out / "shards" / "cap-%03d.tar"), shard_size=4)
    return out


def test_pretrain_stage_runs_end_to_end(corpus, tmp_path):
    """A data mix of a record file (captions, an interleaved document, plain text) and tar shards."""
    shards = corpus / "shards" / "cap-{000..002}.tar"
    rc, out = launch("--stage", "pretrain", "--data-mix", f"{corpus / 'mixed.json'}:0.5,{shards}:0.5",
                     "--train-iters", 3, "--batch-size", 2, "--log-interval", 1, "--skip-accuracy",
                     "--save", tmp_path, "--experiment-name", "pt", "--attention-monitor-interval", 2)
    assert rc == 0, out[-3000:]
    assert "6 samples of 6 records read" in out
    assert "[data-mix] sources (weight, samples):" in out and "50.0%" in out and "(streamed)" in out
    ckpt = run_dir(tmp_path)
    assert (ckpt / "3" / "mp_rank_00_model_states.pt").is_file()
    losses = [r["loss"] for r in train_log(ckpt)]
    assert len(losses) == 3 and all(l == l and l > 0 for l in losses)
    mix = train_log(ckpt, "data_mix")
    assert [r["step"] for r in mix] == [1, 2, 3]
    last = mix[-1]
    assert last["overall"]["samples"] == 6 and sum(r["samples"] for r in last["sources"].values()) == 6
    assert last["overall"]["trained_tokens"] > 0 and last["overall"]["image_tokens"] > 0
    assert "[data] step 3:" in out
    # the attention monitor: before training, at step 2 and after the last step
    attention = train_log(ckpt, "attention")
    assert [r["step"] for r in attention] == [0, 2]
    layers = PRESETS["cogvlm-tiny"].num_layers
    assert all(len(r["text_to_image_attention"]) == layers and all(0 < s < 1 for s in r["text_to_image_attention"])
               for r in attention)  # one value per language layer
    assert (ckpt / "attention_text_to_image.png").is_file() and (ckpt / "loss_curve.png").is_file()
    events = b"".join(p.read_bytes() for p in (tmp_path / "runs" / ckpt.name).glob("events.out.tfevents*"))
    assert f"attention/text_to_image/layer_{layers - 1}".encode() in events


def test_a_resumed_data_mix_run_continues_exactly(corpus, tmp_path):
    """4 steps straight == 2 steps, checkpoint, resume for 2: the stream starts after the consumed
    batches (no re-reading), so the losses of steps 3 and 4 are the same."""
    import shutil
    mix = f"{corpus / 'caps.jsonl'}:0.5,{corpus / 'shards' / 'cap-{000..002}.tar'}:0.5"
    common = ["--stage", "pretrain", "--data-mix", mix, "--train-iters", 4, "--batch-size", 2, "--log-interval", 2,
              "--skip-accuracy", "--experiment-name", "r"]
    rc, out = launch(*common, "--save", tmp_path / "a", "--save-interval", 2)
    assert rc == 0, out[-3000:]
    straight = run_dir(tmp_path / "a")
    resumed = tmp_path / "b" / straight.name
    shutil.copytree(straight, resumed, ignore=shutil.ignore_patterns("4"))
    (resumed / "latest").write_text("2")
    rc, out = launch(*common, "--save", tmp_path / "b", "--resume", resumed)
    assert rc == 0, out[-3000:]
    assert "the data stream starts after the 2 micro-batches already trained on" in out
    assert [r["loss"] for r in train_log(straight)] == [r["loss"] for r in train_log(resumed)]
