"""`--stage pretrain` records: captions, interleaved documents, plain text and conversations become
samples whose every text token is trained and whose image spans are BOI [IMG]*L EOI with no label;
bad records are named by file and line."""
import pytest
import torch

from dataset import ImageProcessor, TextProcessor
from dataset.pretrain_records import PretrainDataset, token_counts
from dataset.records import DatasetError
from dataset.text_processor import IGNORE_INDEX

L = 4  # image tokens per image in these tests


@pytest.fixture
def make_ds(tiny_tokenizer, write_records):
    def make(records, images=("a.png", "b.png"), **kw):
        path = write_records(records, images=images)
        tp = TextProcessor(tiny_tokenizer, max_length=kw.pop("max_length", 256), image_length=L)
        return PretrainDataset(ImageProcessor(8), tp, None, str(path), **kw)
    return make


def spans(sample):
    """(BOI, EOI) index pairs of the image spans, from image_embed_mask runs."""
    m = sample["image_embed_mask"].tolist()
    out, start = [], None
    for i, v in enumerate(m + [0]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i - 1))
            start = None
    return out


def check_layout(sample, tokenizer, n_images):
    ids, labels = sample["input_ids"], sample["labels"]
    image = sample["image_embed_mask"].bool()
    assert len(spans(sample)) == n_images == sample["num_images"]
    for boi, eoi in spans(sample):
        assert eoi - boi + 1 == L + 2
        assert sample["vision_expert_mask"][boi:eoi].all() and not sample["vision_expert_mask"][eoi]
        assert sample["image_rope_mask"][boi + 1:eoi].all() and not sample["image_rope_mask"][boi]
        pos = sample["position_ids"]
        assert (pos[boi + 1:eoi] == pos[boi] + 1).all() and pos[eoi] == pos[boi] + 2
    assert ids[0] == tokenizer.bos_token_id and labels[0] == IGNORE_INDEX
    assert (labels[image] == IGNORE_INDEX).all()
    assert torch.equal(labels[1:][~image[1:]], ids[1:][~image[1:]])  # every text token (and EOS) trained
    assert ids[-1] == tokenizer.eos_token_id and labels[-1] == tokenizer.eos_token_id


def test_caption_interleaved_and_text_are_all_trained(make_ds, tiny_tokenizer):
    ds = make_ds([{"image": "a.png", "text": "a red square"},
                  {"images": ["a.png", "b.png"], "text": "first <image> then the second <image> and the end"},
                  {"text": "only words here"}])
    assert [r.kind for r in ds.data] == ["caption", "interleaved", "text"]
    cap, doc, text = ds[0], ds[1], ds[2]
    check_layout(cap, tiny_tokenizer, 1)
    assert spans(cap)[0][0] == 1  # the caption's image comes right after BOS
    assert cap["vision"]["image"].shape == (1, 3, 8, 8)
    check_layout(doc, tiny_tokenizer, 2)
    assert doc["vision"]["image"].shape[0] == 2
    first = tiny_tokenizer.encode("first", add_special_tokens=False)
    assert doc["input_ids"][1:1 + len(first)].tolist() == first  # text before the first image, in order
    check_layout(text, tiny_tokenizer, 0)
    assert "vision" not in text
    counts = token_counts(doc)
    assert counts["image_tokens"] == 2 * (L + 2)
    assert counts["trained_tokens"] == counts["text_tokens"] - 1  # all text but BOS


def test_conversations_train_prompt_and_answer(make_ds, tiny_tokenizer):
    conv = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                {"from": "gpt", "value": "A square."}]}
    ds = make_ds([conv])
    sample = ds[0]
    check_layout(sample, tiny_tokenizer, 1)
    question = tiny_tokenizer.encode("What", add_special_tokens=False)[0]
    trained = sample["labels"][sample["labels"] != IGNORE_INDEX].tolist()
    assert question in trained  # the prompt is trained too in pretraining


def test_bad_records_are_named_by_file_and_line(make_ds):
    ds = make_ds([{"image": "a.png", "text": "ok"},
                  {"images": ["a.png"], "text": "no marker"},
                  {"text": "an <image> without images"},
                  {"image": "missing.png", "text": "x"},
                  {"caption": "wrong field"},
                  "{not json",
                  {"text": ""}])
    assert len(ds) == 1
    got = {p.line: p.reason for p in ds.problems}
    assert set(got) == {2, 3, 4, 5, 6, 7}
    assert "0 <image> marker(s) but 'images' lists 1" in got[2]
    assert "no 'images'" in got[3]
    assert "missing image" in got[4]
    assert "none of 'text'" in got[5]
    assert "bad JSON" in got[6]
    assert "non-empty string" in got[7]
    assert all(p.file.endswith("data.jsonl") for p in ds.problems)
    with pytest.raises(DatasetError, match=r"data.jsonl:2"):
        make_ds([{"text": "fine"}, {"images": ["a.png"], "text": "no marker"}], strict=True)


def test_long_documents_follow_the_truncation_rules(make_ds):
    long_text = " ".join(["word"] * 200)
    ds = make_ds([{"text": long_text}, {"image": "a.png", "text": long_text}], max_length=40)
    assert len(ds) == 2 and ds.num_truncated == 2
    assert all(len(ds[i]["input_ids"]) == 40 for i in range(2))
    assert ds[0]["labels"][-1] != IGNORE_INDEX and ds[0]["input_ids"][-1] != 2  # cut: no EOS appended


def test_packing_reads_pretrain_lengths_without_images(make_ds):
    from dataset.packing import sample_lengths
    ds = make_ds([{"image": "a.png", "text": "a red square"}, {"text": "only words here"},
                  {"images": ["a.png", "b.png"], "text": "x <image> y <image> z"}])
    assert sample_lengths(ds) == [len(ds[i]["input_ids"]) for i in range(len(ds))]
