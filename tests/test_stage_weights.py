"""Per-stage loss weights: parsing, which tokens belong to which stage, the weighted loss (all ones is the
plain loss exactly), the collated weights and what `dataset.inspect` shows."""
import pytest
import torch

from dataset.collator import DataCollator
from dataset.cot_format import four_stage
from dataset.records import ASSISTANT, USER, Turn
from dataset.stage_weights import parse_stage_weights, token_stages
from dataset.text_processor import IGNORE_INDEX, TextProcessor
from finetune.step import token_loss

ANSWER = four_stage("I will count the circles.", "The image shows a red circle and a blue square.",
                    "The circles are a red circle. That makes 1. So the answer is 1, option B.", "B")


def test_parse_fills_unnamed_stages_with_one_and_names_bad_parts():
    assert parse_stage_weights("SUMMARY=0.5,CONCLUSION=2") == {"SUMMARY": 0.5, "CAPTION": 1.0, "REASONING": 1.0,
                                                                "CONCLUSION": 2.0}
    assert parse_stage_weights(None) is None and parse_stage_weights("") is None
    for bad, words in (("SUMMARY", "STAGE=WEIGHT"), ("ANSWER=2", "unknown stage"), ("CAPTION=x", "not a number"),
                       ("CAPTION=-1", ">= 0")):
        with pytest.raises(ValueError, match=words):
            parse_stage_weights(bad)


def test_every_answer_token_gets_its_stage_tags_included(tiny_tokenizer):
    ids = tiny_tokenizer.encode(ANSWER, add_special_tokens=False)
    stages = token_stages(tiny_tokenizer, ids)
    pieces = tiny_tokenizer.convert_ids_to_tokens(ids)
    by_stage = {}
    for piece, stage in zip(pieces, stages):
        by_stage.setdefault(stage, []).append(piece)
    for name in ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION"):
        assert by_stage[name][0] == f"<{name}>" and by_stage[name][-1] == f"</{name}>", name
    # the decoded text of each stage's tokens is that stage, tags included
    for name in ("SUMMARY", "CONCLUSION"):
        text = tiny_tokenizer.decode([i for i, s in zip(ids, stages) if s == name]).strip()
        assert text.startswith(f"<{name}>") and text.endswith(f"</{name}>")
    # only separators between the stages are outside
    assert all(tiny_tokenizer.decode([i]).strip() == "" for i, s in zip(ids, stages) if s is None)


def _batch(tokenizer, weights):
    tp = TextProcessor(tokenizer, max_length=None, image_length=4, stage_weights=weights)
    samples = []
    for answer in (ANSWER, "no stages here"):
        sample = tp.encode_turns([Turn(USER, "<image>\nHow many circles?"), Turn(ASSISTANT, answer)])
        sample["vision"] = {"image": torch.zeros(1, 3, 8, 8)}
        samples.append(sample)
    return DataCollator()(samples)


def test_all_ones_weights_give_exactly_the_plain_loss(tiny_tokenizer):
    plain = _batch(tiny_tokenizer, None)
    ones = _batch(tiny_tokenizer, parse_stage_weights("SUMMARY=1"))
    assert "loss_weights" not in plain and torch.equal(ones["labels"], plain["labels"])
    torch.manual_seed(0)
    logits = torch.randn(*plain["labels"].shape, 1024)
    s0, n0 = token_loss(logits, plain["labels"])
    s1, n1 = token_loss(logits, ones["labels"], ones["loss_weights"])
    assert torch.equal(s0, s1) and float(n0) == float(n1)


def test_weighted_loss_is_the_weighted_mean_over_labelled_tokens(tiny_tokenizer):
    weights = parse_stage_weights("SUMMARY=0.5,CAPTION=1,REASONING=1,CONCLUSION=2")
    batch = _batch(tiny_tokenizer, weights)
    w, labels = batch["loss_weights"], batch["labels"]
    assert w.dtype == torch.float and w.shape == labels.shape
    # the conclusion's letter weighs 2, the summary's words 0.5, the sample without stages 1
    letter = tiny_tokenizer.encode(" B", add_special_tokens=False)[-1]
    row0 = labels[0].tolist()
    k = max(i for i, t in enumerate(row0) if t == letter)
    assert float(w[0, k]) == 2.0
    assert float(w[0, row0.index(tiny_tokenizer.encode("<SUMMARY>", add_special_tokens=False)[-1])]) == 0.5
    assert set(w[1][labels[1] != IGNORE_INDEX].tolist()) == {1.0}
    torch.manual_seed(1)
    logits = torch.randn(*labels.shape, 1024)
    loss_sum, weight_sum = token_loss(logits, labels, w)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 1024), labels[:, 1:].reshape(-1),
                                           ignore_index=IGNORE_INDEX, reduction="none")
    keep = labels[:, 1:].reshape(-1) != IGNORE_INDEX
    ww = w[:, 1:].reshape(-1)[keep]
    torch.testing.assert_close(loss_sum / weight_sum, (ce[keep] * ww).sum() / ww.sum())
    plain_sum, count = token_loss(logits, labels)
    assert not torch.isclose(loss_sum / weight_sum, plain_sum / count)


def test_inspect_shows_each_stage_weight(tiny_tokenizer, write_records, capsys):
    from dataset.inspect import main
    rec = {"id": "r1", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nHow many circles?"}, {"from": "gpt", "value": ANSWER}]}
    path = write_records([rec], images=("a.png",))
    assert main([str(path), "--tokenizer", tiny_tokenizer.model_file, "--image-length", "4",
                 "--stage-loss-weights", "SUMMARY=0.5,CONCLUSION=2"]) == 0
    out = capsys.readouterr().out
    assert "⟦<SUMMARY> I will count the circles. </SUMMARY>⟧×0.5" in out
    assert "⟦<CONCLUSION> B </CONCLUSION>⟧×2" in out
    assert "SUMMARY=0.5 (" in out and "CONCLUSION=2 (" in out and "other=1 (" in out
