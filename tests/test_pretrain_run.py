"""A few `--stage pretrain` steps end to end through the launcher on CPU (captions, an interleaved
document, plain text), with a loadable checkpoint and a training log."""
import json

import pytest
from PIL import Image

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
    return out


def test_pretrain_stage_runs_end_to_end(corpus, tmp_path):
    rc, out = launch("--stage", "pretrain", "--train-data", corpus / "mixed.json", "--train-iters", 3,
                     "--batch-size", 2, "--log-interval", 1, "--skip-accuracy", "--save", tmp_path,
                     "--experiment-name", "pt")
    assert rc == 0, out[-3000:]
    assert "6 samples of 6 records read" in out
    ckpt = run_dir(tmp_path)
    assert (ckpt / "3" / "mp_rank_00_model_states.pt").is_file()
    losses = [r["loss"] for r in train_log(ckpt)]
    assert len(losses) == 3 and all(l == l and l > 0 for l in losses)
