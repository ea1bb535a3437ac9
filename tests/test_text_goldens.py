"""Parity with the OFFICIAL CogVLM text processors on every run, through goldens the official code produced
(tests/data/official_text_goldens.json, written by tests/data/make_text_goldens.py from a THUDM/CogVLM
checkout): training samples that fit are token-for-token the official `llama2_text_processor`'s,
inference prompts the official `llama2_text_processor_inference`'s; where the official truncation trains
a false EOS, ours keeps the answer's tokens and trains none."""
import hashlib
import json
from pathlib import Path

import pytest

from dataset import IGNORE_INDEX, TextProcessor, Turn
from inference.prompt import build_prompt
from tests.helpers import ByteTokenizer

GOLDENS = json.loads((Path(__file__).parent / "data" / "official_text_goldens.json").read_text(encoding="utf-8"))
TOKEN_LISTS = ("input_ids", "labels", "position_ids", "image_embed_mask", "vision_expert_mask", "image_rope_mask")


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    """The tiny tokenizer, checked to be the one the goldens were made with."""
    pieces = "\n".join(tiny_tokenizer.sp.id_to_piece(i) for i in range(tiny_tokenizer.vocab_size))
    if hashlib.sha256(pieces.encode("utf-8")).hexdigest() != GOLDENS["tokenizer"]["sha256_of_pieces"]:
        pytest.fail("the tiny tokenizer is not the one the goldens were made with: regenerate them with "
                    "COGVLM_CODE=/path/to/CogVLM python tests/data/make_text_goldens.py")
    return tiny_tokenizer


def ours(tp, case) -> dict:
    out = tp(case["answer"], case["query"])
    got = {k: out[k].tolist() for k in TOKEN_LISTS}
    got["context_length"] = out["context_length"]
    return got


def test_the_goldens_cover_what_they_should():
    training = GOLDENS["training"]
    assert {c["template"] for c in training} == {"base", "chat", "vqa", "chat_old"}
    assert {c["kind"] for c in training} == {"plain", "history", "images"}
    assert {c["image_length"] for c in training} == {1, 3, 64}
    assert len(GOLDENS["inference"]) >= 30 and len(GOLDENS["truncated"]) >= 3
    assert GOLDENS["official"]["repo"] == "THUDM/CogVLM"


def test_training_samples_equal_the_official_processor(tok):
    for case in GOLDENS["training"]:
        tp = TextProcessor(tok, max_length=case["max_target_length"], image_length=case["image_length"],
                           template=case["template"])
        assert ours(tp, case) == case["official"], case


def test_training_text_equals_the_official_processor_byte_for_byte():
    """Through a tokenizer that keeps every character, spaces and tags included (sentencepiece folds spaces)."""
    checked = 0
    for case in GOLDENS["training"]:
        if "official_bytes" not in case:
            continue
        tp = TextProcessor(ByteTokenizer(), max_length=case["max_target_length"], image_length=case["image_length"],
                           template=case["template"])
        got = ours(tp, case)
        assert {k: got[k] for k in ("input_ids", "labels", "context_length")} == case["official_bytes"], case
        checked += 1
    assert checked >= 60


def test_marker_records_equal_the_official_processor(tok):
    """A data record's "<image>\\nquestion" turn gives the official sample of the question (stripped)."""
    checked = 0
    for case in GOLDENS["training"]:
        if case["kind"] != "plain" or case["query"] != case["query"].strip() or "<" in case["query"]:
            continue
        tp = TextProcessor(tok, max_length=None, image_length=case["image_length"], template=case["template"])
        out = tp.encode_turns([Turn("user", "<image>\n" + case["query"]), Turn("assistant", case["answer"])])
        assert {k: out[k].tolist() for k in TOKEN_LISTS} == {k: case["official"][k] for k in TOKEN_LISTS}, case
        checked += 1
    assert checked >= 20


def test_inference_prompts_equal_the_official_processor(tok):
    for case in GOLDENS["inference"]:
        prompt = build_prompt(tok, case["query"], image_length=case["image_length"], template=case["template"])
        official = case["official"]
        assert list(prompt.input_ids) == official["input_ids"], case
        assert list(prompt.position_ids) == official["position_ids"], case
        assert list(prompt.image_embed_mask) == official["image_embed_mask"], case
        assert list(prompt.vision_expert_mask) == official["vision_expert_mask"], case


def test_official_truncation_trains_a_false_eos_and_ours_does_not(tok):
    eos = tok.eos_token_id
    for case in GOLDENS["truncated"]:
        cut, full = case["official"], case["official_untruncated"]
        n = len(cut["input_ids"])
        # The official sample: its answer cut mid-way, then an EOS that is trained.
        assert n < len(full["input_ids"]) and cut["input_ids"][:-1] == full["input_ids"][:n - 1]
        assert cut["input_ids"][-1] == eos and cut["labels"][-1] == eos and full["input_ids"][n - 1] != eos
        tp = TextProcessor(tok, max_length=case["max_target_length"], image_length=case["image_length"],
                           template=case["template"])
        got = ours(tp, case)
        m = len(got["input_ids"])
        assert m == case["max_target_length"] and m >= n - 1
        for k in TOKEN_LISTS:  # the first max_length tokens of the official untruncated sample, as they are
            assert got[k] == full[k][:m], (k, case)
        assert eos not in got["input_ids"] and eos not in got["labels"]
        assert [t for t in got["labels"] if t != IGNORE_INDEX]  # still something to learn
