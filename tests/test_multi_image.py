"""Multi-image batches through the model: the ViT outputs are scattered into the image spans in reading
order (row by row, left to right), so each span gets its own image and swapping two images swaps the
embeddings of their spans and nothing else."""
import torch


def two_rows(config, n_text=3):
    """Row 0: [BOS] span A, text, span B, text; row 1: [BOS] span C, text, padding. Returns
    (input_ids, image_embed_mask, span starts per image in reading order)."""
    L = config.image_length
    span = L + 2  # BOI + L image tokens + EOI
    n = 1 + span + n_text + span + n_text
    ids = torch.full((2, n), 5, dtype=torch.long)
    mask = torch.zeros(2, n, dtype=torch.long)
    starts = [(0, 1), (0, 1 + span + n_text), (1, 1)]
    for row, s in starts:
        mask[row, s:s + span] = 1
    return ids, mask, starts


def scatter(model, images, ids, mask):
    n = images.shape[0]
    return model.mixins["eva"].word_embedding_forward(
        ids, None, image_embed_mask=mask, vision_image=images, vision_input_ids=torch.zeros(n, 1, dtype=torch.long),
        vision_attention_mask=torch.ones(n, 1), vision_position_ids=None)


def test_each_span_gets_its_image_in_reading_order(tiny_model, tiny_config):
    g = torch.Generator().manual_seed(0)
    size = tiny_config.eva.image_size
    images = torch.randn(3, 3, size[0], size[1], generator=g)  # A, B, C
    ids, mask, starts = two_rows(tiny_config)
    L = tiny_config.image_length
    with torch.no_grad():
        own = [tiny_model.encode_images(vision_image=images[i:i + 1])[0] for i in range(3)]  # each alone: [L, h]
        out = scatter(tiny_model, images, ids, mask)
        swapped = scatter(tiny_model, images[[1, 0, 2]], ids, mask)  # B, A, C
    eva = tiny_model.mixins["eva"]
    for k, (row, s) in enumerate(starts):
        torch.testing.assert_close(out[row, s + 1:s + 1 + L], own[k], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[row, s], eva.boi[0, 0])
        torch.testing.assert_close(out[row, s + 1 + L], eva.eoi[0, 0])
    (r0, a), (_, b), (r1, c) = starts
    torch.testing.assert_close(swapped[r0, a + 1:a + 1 + L], own[1], rtol=1e-5, atol=1e-5)  # B now in the first span
    torch.testing.assert_close(swapped[r0, b + 1:b + 1 + L], own[0], rtol=1e-5, atol=1e-5)  # A in the second
    torch.testing.assert_close(swapped[r1], out[r1])  # the other row is untouched
    text = mask == 0
    torch.testing.assert_close(swapped[text], out[text])  # text embeddings too


def test_logits_follow_the_images(tiny_model, tiny_config):
    """A full forward of the two-image row: swapping its images changes the text after the spans, and
    equals a forward whose spans were filled with the precomputed embeddings in that order."""
    g = torch.Generator().manual_seed(1)
    size = tiny_config.eva.image_size
    images = torch.randn(2, 3, size[0], size[1], generator=g)
    ids, mask, _ = two_rows(tiny_config)
    ids, mask = ids[:1], mask[:1]
    n = ids.shape[1]
    common = dict(position_ids=torch.arange(n)[None], attention_mask=torch.ones(1, 1, n, n).tril(),
                  image_embed_mask=mask, vision_expert_mask=mask)
    with torch.no_grad():
        embeds = tiny_model.encode_images(vision_image=images)  # [2, L, h]
        ab = tiny_model(ids, vision_image=images, vision_input_ids=torch.zeros(2, 1, dtype=torch.long),
                        vision_attention_mask=torch.ones(2, 1), **common)[0]
        ba = tiny_model(ids, image_embeds=embeds[[1, 0]], **common)[0]
        ab_pre = tiny_model(ids, image_embeds=embeds, **common)[0]
    torch.testing.assert_close(ab, ab_pre, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ab[0, -1], ba[0, -1], atol=1e-4)
