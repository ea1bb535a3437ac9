"""ItemDataset: both record forms, image roots, every bad-input case, the README subclass, DataLoader."""
import argparse
import json
import logging

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dataset import DataCollator, DatasetError, ImageProcessor, ItemDataset, TextProcessor
from dataset.examples import FolderLabelDataset

L, PX = 4, 28


def conv(rid, image="a.png", question="<image>\nHow many circles?", answer="two"):
    return {"id": rid, "image": image,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def make(tok, path, max_length=256, **kw):
    tp = TextProcessor(tok, max_length=max_length, image_length=L)
    return ItemDataset(ImageProcessor(PX), tp, argparse.Namespace(), str(path), **kw)


def test_jsonl_conversations_and_json_array_messages_agree(tiny_tokenizer, write_records):
    jsonl = write_records([conv("r1"), conv("r2", image=["a.png", "b.png"],
                                           question="<image>\nleft <image> or right?", answer="left")],
                          images=("a.png", "b.png"))
    messages = [
        {"id": "r1", "images": ["a.png"], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many circles?"}]},
            {"role": "assistant", "content": "two"}]},
        {"id": "r2", "images": ["a.png", "b.png"], "messages": [
            {"role": "user", "content": "<image>\nleft <image> or right?"},
            {"role": "assistant", "content": "left"}]},
    ]
    array = write_records(messages, name="data.json", as_array=True)
    a, b = make(tiny_tokenizer, jsonl), make(tiny_tokenizer, array)
    assert len(a) == len(b) == 2 and not a.problems and not b.problems
    assert [r.line for r in b.data] == [2, 3]  # each array element knows its line
    for x, y in zip(a, b):
        assert x["question_id"] == y["question_id"]
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
        assert torch.equal(x["vision"]["image"], y["vision"]["image"])
    two = a[1]
    assert two["vision"]["image"].shape == (2, 3, PX, PX) and two["num_images"] == 2
    assert not torch.equal(two["vision"]["image"][0], two["vision"]["image"][1])  # a.png then b.png
    assert two["vision"]["input_ids"].tolist() == [[0], [0]] and two["vision"]["attention_mask"].tolist() == [[1], [1]]


def test_image_root_from_kwarg_or_args(tiny_tokenizer, write_records, tmp_path):
    write_records([], images=("pics/a.png",), name="unused.jsonl")
    data_dir = tmp_path / "meta"
    data_dir.mkdir()
    (data_dir / "d.jsonl").write_text(json.dumps(conv("r1")) + "\n")
    tp = TextProcessor(tiny_tokenizer, max_length=256, image_length=L)
    by_kwarg = ItemDataset(ImageProcessor(PX), tp, None, str(data_dir / "d.jsonl"), image_root=str(tmp_path / "pics"))
    by_args = ItemDataset(ImageProcessor(PX), tp, argparse.Namespace(image_root=str(tmp_path / "pics")),
                          str(data_dir / "d.jsonl"))
    assert by_kwarg.data[0].images == by_args.data[0].images == [str(tmp_path / "pics" / "a.png")]
    with pytest.raises(DatasetError, match="missing image"):  # default root: the data file's folder
        ItemDataset(ImageProcessor(PX), tp, None, str(data_dir / "d.jsonl"), strict=True)


BAD = [
    ("{not json", "bad JSON line"),
    (json.dumps({"id": "x", "image": "a.png"}), "no 'conversations'"),
    (json.dumps(conv("x", question="<image>\n<image>\nTwo?")), "2 <image> marker(s) but 1 image(s)"),
    (json.dumps(conv("x", image=["a.png", "b.png"])), "1 <image> marker(s) but 2 image(s)"),
    (json.dumps(conv("x", image="gone.png")), "missing image"),
    (json.dumps(conv("x", image="../outside.png")), "leaves the image root"),
    (json.dumps(conv("x", question="<image>\n" + "red " * 300)), "cannot|image span|> max_length"),
    (json.dumps({"id": "x", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nHi"}]}), "ends with a user turn"),
]


@pytest.mark.parametrize("line,reason", BAD, ids=[r for _, r in BAD])
def test_bad_record_is_skipped_counted_and_reported_once(tiny_tokenizer, write_records, tmp_path, caplog, line, reason):
    Image.new("RGB", (8, 8)).save(tmp_path.parent / "outside.png")
    path = write_records([conv("good1"), line, conv("good2")], images=("a.png", "b.png"))
    with caplog.at_level(logging.WARNING, logger="cogcot.dataset"):
        ds = make(tiny_tokenizer, path, max_length=128)
    assert [r.id for r in ds.data] == ["good1", "good2"]
    assert len(ds.problems) == 1
    problem = ds.problems[0]
    assert problem.file == str(path) and problem.line == 2
    assert any(part in problem.reason for part in reason.split("|")), problem.reason
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and f"{path}:2" in warnings[0].getMessage()
    with pytest.raises(DatasetError, match=f"{path}:2"):  # strict: the first problem raises
        make(tiny_tokenizer, path, max_length=128, strict=True)


def test_broken_json_array_reports_its_line(tiny_tokenizer, write_records):
    path = write_records([conv("r1"), '{"id": "r2", "image": }', conv("r3")], images=("a.png",), as_array=True)
    ds = make(tiny_tokenizer, path)
    assert [r.id for r in ds.data] == ["r1"]
    assert ds.problems[0].line == 3 and "bad JSON" in ds.problems[0].reason


def test_unreadable_image_raises_at_getitem_naming_it(tiny_tokenizer, write_records, tmp_path):
    path = write_records([conv("ok"), conv("broken", image="bad.png"), conv("bomb", image="big.png")], images=("a.png",))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    Image.new("RGB", (300, 300)).save(tmp_path / "big.png")
    ds = make(tiny_tokenizer, path, max_pixels=200 * 200)
    assert len(ds) == 3 and ds[0]["question_id"] == "ok"  # files exist: decoding happens per sample
    with pytest.raises(DatasetError, match=r"data\.jsonl:2 \[id broken\]: image .*bad\.png: not a readable image"):
        ds[1]
    with pytest.raises(DatasetError, match=r"\[id bomb\].*big\.png.*decompression bomb"):
        ds[2]


def test_nothing_usable_is_an_error(tiny_tokenizer, write_records, tmp_path):
    path = write_records([conv("x", image="gone.png")])
    with pytest.raises(DatasetError, match="no usable samples"):
        make(tiny_tokenizer, path)
    with pytest.raises(DatasetError, match="data file not found"):
        make(tiny_tokenizer, tmp_path / "typo.jsonl")
    with pytest.raises(TypeError, match="image_rot"):
        make(tiny_tokenizer, path, image_rot="x")


def test_readme_folder_subclass(tiny_tokenizer, tmp_path):
    folder = tmp_path / "captcha"
    folder.mkdir()
    for label in ("3xk9q", "ab12"):
        Image.new("RGB", (40, 16), (200, 200, 200)).save(folder / f"{label}.png")
    (folder / "notes.txt").write_text("not an image")
    tp = TextProcessor(tiny_tokenizer, max_length=128, image_length=L)
    ds = FolderLabelDataset(ImageProcessor(PX), tp, None, str(folder))
    assert len(ds) == 2
    batch = DataCollator()([ds[0], ds[1]])
    assert batch["question_id"] == ["3xk9q", "ab12"] and batch["vision_image"].shape == (2, 3, PX, PX)
    for row, label in enumerate(batch["question_id"]):
        trained = [t for t in batch["labels"][row].tolist() if t not in (-100, tiny_tokenizer.eos_token_id)]
        assert tiny_tokenizer.decode(trained) == label
        assert torch.equal(batch["input_ids"][row, :batch["lengths"][row]], tp(label, "CAPTCHA:")["input_ids"])


def test_dataloader_with_two_workers(tiny_tokenizer, write_records):
    records = [conv(f"r{i}", image=f"img{i % 5}.png", answer="two " * (i % 4 + 1)) for i in range(14)]
    path = write_records(records, images=[f"img{i}.png" for i in range(5)])
    ds = make(tiny_tokenizer, path)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=DataCollator(tiny_tokenizer.pad_token_id))
    seen = []
    for batch in loader:
        b, n = batch["input_ids"].shape
        assert n == int(batch["lengths"].max()) and batch["vision_image"].shape == (b, 3, PX, PX)
        assert batch["attention_mask"] is None  # right-padded rows: plain causal attention
        seen += batch["question_id"]
    assert seen == [f"r{i}" for i in range(14)]


def test_symlink_out_of_the_image_root_is_refused_like_dotdot(tiny_tokenizer, write_records, tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    (tmp_path / "link.png").symlink_to(outside / "secret.png")  # a file link leaving the root
    (tmp_path / "linkdir").symlink_to(outside, target_is_directory=True)  # a folder link leaving it
    (tmp_path / "inside.png").symlink_to(tmp_path / "a.png")  # a link that stays inside is fine
    path = write_records([conv("r1", image="link.png"), conv("r2", image="linkdir/secret.png"),
                          conv("r3", image="inside.png")], images=("a.png",))
    ds = make(tiny_tokenizer, path)
    assert [r.id for r in ds.data] == ["r3"]
    assert [p.line for p in ds.problems] == [1, 2]
    assert all("leaves the image root" in p.reason and "symlink" in p.reason for p in ds.problems)


def test_truncated_and_dropped_samples_are_counted(tiny_tokenizer, write_records):
    path = write_records([conv("short"), conv("long", answer="two " * 60), conv("short2")], images=("a.png",))
    cut = make(tiny_tokenizer, path, max_length=40)
    assert len(cut) == 3 and cut.num_truncated == 1 and cut.num_dropped == 0 and not cut.problems
    assert "3 samples of 3 records read, 1 truncated to max_length 40" in cut.summary()
    tp = TextProcessor(tiny_tokenizer, max_length=40, image_length=L, truncation="drop")
    for strict in (False, True):  # a chosen drop is not a problem, even in strict mode
        drop = ItemDataset(ImageProcessor(PX), tp, None, str(path), strict=strict)
        assert [r.id for r in drop.data] == ["short", "short2"] and drop.num_dropped == 1 and not drop.problems
    assert "1 longer than max_length dropped (truncation drop)" in drop.summary()
    assert drop[1]["question_id"] == "short2"


def test_inputs_that_are_not_what_they_seem(tiny_tokenizer, write_records, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DatasetError, match=f"no samples in {empty}: the file is empty"):
        make(tiny_tokenizer, empty)
    blank_array = write_records([], name="none.json", as_array=True)
    with pytest.raises(DatasetError, match="no samples in .*none.json: it holds no records"):
        make(tiny_tokenizer, blank_array)
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(conv("r1"), indent=2))
    ds = make(tiny_tokenizer, pretty, allow_empty=True)
    assert len(ds.problems) == 1 and ds.problems[0].line == 1
    assert "single JSON object spread over several lines; expected a JSON array or one object per line" in \
        ds.problems[0].reason
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(conv("r1"), indent=2)[:-3])  # pretty-printed and cut short
    ds = make(tiny_tokenizer, broken, allow_empty=True)
    assert len(ds.problems) == 1 and "looks like one pretty-printed JSON object" in ds.problems[0].reason
    (tmp_path / "adir.png").mkdir()
    path = write_records([conv("r1", image="adir.png"), conv("r2")], images=("a.png",))
    ds = make(tiny_tokenizer, path)
    assert [r.id for r in ds.data] == ["r2"] and "is a directory, not an image file" in ds.problems[0].reason
