"""DataCollator: pad to the longest sample, official vision_* stacking, a per-batch boolean mask."""
import pytest
import torch
import torch.nn.functional as F

from dataset import DataCollator, TextProcessor, Turn, attention_mask_from_segments, vision_inputs

L, PX = 4, 14


def sample(tp, answer, n_images=1, seed=0):
    markers = "<image>\n" + "and <image> " * (n_images - 1)
    out = tp.encode_turns([Turn("user", markers + "Which?"), Turn("assistant", answer)])
    g = torch.Generator().manual_seed(seed)
    return dict(out, question_id=f"s{seed}", vision=vision_inputs(torch.randn(n_images, 3, PX, PX, generator=g)))


@pytest.fixture
def tp(tiny_tokenizer):
    return TextProcessor(tiny_tokenizer, max_length=512, image_length=L)


def test_pads_to_longest_sample_not_max_length(tp):
    a, b = sample(tp, "red", seed=0), sample(tp, "two circles and three squares on the left", seed=1)
    batch = DataCollator(pad_token_id=7)([a, b])
    la, lb = len(a["input_ids"]), len(b["input_ids"])
    assert la < lb < 512 and batch["input_ids"].shape == (2, lb)
    assert batch["lengths"].tolist() == [la, lb]
    assert torch.equal(batch["input_ids"][0, :la], a["input_ids"]) and torch.equal(batch["input_ids"][1], b["input_ids"])
    assert batch["input_ids"][0, la:].eq(7).all() and batch["labels"][0, la:].eq(-100).all()
    for key in ("image_embed_mask", "vision_expert_mask", "image_rope_mask", "segment_ids"):
        assert batch[key][0, la:].eq(0).all() and torch.equal(batch[key][1], b[key])
    assert batch["context_length"].tolist() == [a["context_length"], b["context_length"]]
    assert batch["question_id"] == ["s0", "s1"]
    padded = DataCollator(pad_to_multiple_of=8)([a, b])
    assert padded["input_ids"].shape[1] % 8 == 0 and padded["input_ids"].shape[1] >= lb


def test_images_stack_in_sample_then_marker_order(tp):
    batch = DataCollator()([sample(tp, "x", n_images=2, seed=3), sample(tp, "y", seed=4)])
    first, second = sample(tp, "x", n_images=2, seed=3), sample(tp, "y", seed=4)
    assert batch["vision_image"].shape == (3, 3, PX, PX)
    assert torch.equal(batch["vision_image"], torch.cat([first["vision"]["image"], second["vision"]["image"]]))
    assert batch["vision_input_ids"].tolist() == [[0]] * 3 and batch["vision_attention_mask"].tolist() == [[1]] * 3
    assert batch["num_images"].tolist() == [2, 1]


def test_right_padded_batch_needs_no_mask(tp):
    """One sample per row, padding at the end: plain causal attention, no [B,1,n,n] tensor."""
    batch = DataCollator()([sample(tp, "red"), sample(tp, "two circles and three squares")])
    assert batch["attention_mask"] is None
    assert batch["segment_ids"].max() == 1


def test_segment_mask_is_causal_within_real_tokens(tp):
    a, b = sample(tp, "red"), sample(tp, "two circles and three squares")
    batch = DataCollator()([a, b])
    mask, la = attention_mask_from_segments(batch["segment_ids"]), len(a["input_ids"])
    n = mask.shape[-1]
    assert mask.dtype == torch.bool and mask.shape == (2, 1, n, n)
    tril = torch.ones(n, n, dtype=torch.bool).tril()
    assert torch.equal(mask[1, 0], tril)
    assert torch.equal(mask[0, 0, :la, :la], tril[:la, :la])
    assert not mask[0, 0, :la, la:].any() and not mask[0, 0, la:, :la].any()  # real and padding never mix
    assert mask[0, 0].any(dim=-1).all()  # no empty row (an empty row makes softmax NaN)


def test_attention_with_mask_equals_unpadded_attention(tp):
    """What the mask is for: SDPA on the padded batch gives each sample's own causal attention."""
    samples = [sample(tp, "red"), sample(tp, "two circles and three squares", seed=1)]
    batch = DataCollator()(samples)
    b, n = batch["input_ids"].shape
    q, k, v = torch.randn(3, b, 2, n, 8, generator=torch.Generator().manual_seed(0)).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask_from_segments(batch["segment_ids"]))
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # what training runs: no mask
    assert torch.isfinite(out).all()
    for row, length in enumerate(batch["lengths"].tolist()):
        ref = F.scaled_dot_product_attention(q[row:row + 1, :, :length], k[row:row + 1, :, :length],
                                             v[row:row + 1, :, :length], is_causal=True)
        torch.testing.assert_close(out[row:row + 1, :, :length], ref)
        torch.testing.assert_close(causal[row:row + 1, :, :length], ref)


def test_packed_segments_are_block_diagonal():
    mask = attention_mask_from_segments(torch.tensor([[1, 1, 2, 2, 2, 0]]))[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0],
                             [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_bad_batches_fail_loudly(tp):
    good = sample(tp, "red")
    with pytest.raises(ValueError, match="sample 1 of the batch is {}"):
        DataCollator()([good, {}])
    with pytest.raises(ValueError, match="sample 0 of the batch is None"):
        DataCollator()([None, good])
    with pytest.raises(ValueError, match="empty batch"):
        DataCollator()([])
    wrong = dict(good, vision=vision_inputs(torch.zeros(2, 3, PX, PX)))
    with pytest.raises(ValueError, match="1 image span.* but 2 image"):
        DataCollator()([good, wrong])
    no_key = {k: v for k, v in good.items() if k != "labels"}
    with pytest.raises(ValueError, match="no 'labels'"):
        DataCollator()([no_key])


def test_accepts_official_shaped_samples(tp):
    """Official processors return [1, T] tensors; a [1, T] sample batches like a 1-D one."""
    s = sample(tp, "red")
    official = dict(s, **{k: s[k].unsqueeze(0) for k in ("input_ids", "labels", "position_ids", "image_embed_mask",
                                                         "vision_expert_mask", "image_rope_mask")})
    official.pop("segment_ids")
    got, want = DataCollator()([official]), DataCollator()([s])
    for key in ("input_ids", "labels", "position_ids", "segment_ids", "vision_image"):
        assert torch.equal(got[key], want[key])
    assert got["attention_mask"] is None and want["attention_mask"] is None
