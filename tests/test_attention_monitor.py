"""The cross-modal attention monitor: the text-to-image share equals a direct computation from the
attention probabilities, is exact for a hand-set (uniform) pattern in a tiny model, and leaves the
model's outputs and hooks as they were."""
import math

import pytest
import torch

from finetune.attention_monitor import AttentionMonitor, measure, text_to_image_share
from finetune.data import split_batch


def direct_share(q, k, allowed, text_queries, image_keys):
    """Loop over rows, heads and queries: softmax over allowed keys, mass on image keys."""
    b, h, n, d = q.shape
    shares = []
    for r in range(b):
        for i in range(n):
            if not text_queries[r, i] or not (allowed[r, i] & image_keys[r]).any():
                continue
            per_head = []
            for hd in range(h):
                scores = torch.tensor([float(q[r, hd, i] @ k[r, hd, j]) / math.sqrt(d) if allowed[r, i, j]
                                       else float("-inf") for j in range(n)])
                p = scores.softmax(0)
                per_head.append(float(p[image_keys[r]].sum()))
            shares.append(sum(per_head) / h)
    return sum(shares), len(shares)


def test_share_matches_the_attention_probabilities():
    g = torch.Generator().manual_seed(0)
    b, h, n, d = 2, 3, 9, 4
    q, k = torch.randn(b, h, n, d, generator=g), torch.randn(b, h, n, d, generator=g)
    image = torch.zeros(b, n, dtype=torch.bool)
    image[0, 1:4] = True
    image[1, 3:6] = True
    segments = torch.tensor([[1] * 9, [1] * 7 + [0] * 2])  # row 1 is padded
    text = (segments > 0) & ~image
    mask = (segments[:, :, None] == segments[:, None, :]) & torch.ones(n, n, dtype=torch.bool).tril()
    got = text_to_image_share(q, k, mask[:, None], True, text, image)
    want = direct_share(q, k, mask, text, image)
    assert got[1] == want[1] == 5 + 1  # text queries after an image: row 0 positions 4-8, row 1 position 6
    assert got[0] == pytest.approx(want[0], abs=1e-5)
    # a packed row (two samples, segments 1 and 2) under a plain causal mask: each sees only itself
    packed = torch.tensor([[1] * 5 + [2] * 4, [1] * 9])
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    own = (packed[:, :, None] == packed[:, None, :]) & causal
    assert text_to_image_share(q, k, None, True, text, image, segments=packed) == \
        pytest.approx(direct_share(q, k, own, text, image), abs=1e-5)


def test_uniform_attention_in_a_tiny_model_gives_the_counted_share(tiny_model, image_batch):
    """With every query projection zeroed, each text token attends uniformly to what it sees: its share
    on the image is (image tokens seen) / (tokens seen), in every layer."""
    model = tiny_model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "query_key_value" in name:  # q | k | v rows: zero the q third (weights and biases)
                p[: p.shape[0] // 3] = 0
    inputs = image_batch([[5, 6, 7], [8, 9, 10]])
    n = inputs["input_ids"].shape[1]
    batch = dict(inputs, labels=inputs["input_ids"].clone(), segment_ids=torch.ones_like(inputs["input_ids"]),
                 attention_mask=torch.ones(1, 1, n, n, dtype=torch.bool).tril().expand(2, 1, n, n))
    image_tokens = int(inputs["image_embed_mask"][0].sum())  # BOI + L + EOI
    first_text = 1 + image_tokens
    expected = sum(image_tokens / (i + 1) for i in range(first_text, n)) / (n - first_text)
    before = model(**{k: v for k, v in inputs.items()})[0]
    shares = measure(model, batch, split_batch)
    assert len(shares) == len(model.transformer.layers)
    for s in shares:
        assert s == pytest.approx(expected, rel=1e-5)
    assert "attention_probe" not in model.mixins and not model.training
    after = model(**inputs)[0]
    assert torch.equal(before, after)


def test_monitor_logs_and_plots(tiny_model, image_batch, tmp_path):
    inputs = image_batch([[5, 6, 7]])
    n = inputs["input_ids"].shape[1]
    batch = dict(inputs, labels=inputs["input_ids"].clone(), segment_ids=torch.ones_like(inputs["input_ids"]),
                 attention_mask=torch.ones(1, 1, n, n, dtype=torch.bool).tril())
    logged, printed = [], []

    class History:
        def add(self, kind, record):
            logged.append((kind, record))
    monitor = AttentionMonitor(batch, interval=2, split_batch=split_batch, history=History(), printer=printed.append)
    assert monitor.due(0) and monitor.due(4) and not monitor.due(3)
    monitor.run(tiny_model, 0)
    monitor.run(tiny_model, 2)
    assert not monitor.due(2)
    assert [k for k, _ in logged] == ["attention", "attention"]
    shares = logged[0][1]["text_to_image_attention"]
    assert len(shares) == len(tiny_model.transformer.layers) and all(0 < s < 1 for s in shares)
    assert "[attention] step 2:" in printed[1]
    png = monitor.plot(tmp_path / "attention.png")
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
