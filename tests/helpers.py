"""Input builders shared by tests (fixtures wrap them in conftest.py)."""
import torch


def image_prompt_inputs(config, text_ids, seed=0):
    """Batch inputs for rows `[BOS][BOI][IMG]xL[EOI] + text_ids[row]` with one random image per row.

    Positions: BOS 0, BOI 1, all L image tokens 2, EOI 3, text 4... (one shared id for the image).
    """
    text = torch.as_tensor(text_ids, dtype=torch.long)  # [b, t]
    b, t = text.shape
    L = config.image_length
    ids = torch.cat([torch.ones(b, 1, dtype=torch.long), torch.zeros(b, L + 2, dtype=torch.long), text], dim=1)
    n = ids.shape[1]
    image_embed_mask = torch.zeros(b, n, dtype=torch.long)
    image_embed_mask[:, 1:L + 3] = 1
    vision_expert_mask = torch.zeros(b, n, dtype=torch.long)
    vision_expert_mask[:, 1:L + 2] = 1
    position_ids = torch.tensor([0, 1] + [2] * L + list(range(3, 4 + t)))[None].repeat(b, 1)
    g = torch.Generator().manual_seed(seed)
    size = config.eva.image_size
    return dict(input_ids=ids, position_ids=position_ids, attention_mask=torch.ones(1, 1, n, n).tril(),
                image_embed_mask=image_embed_mask, vision_expert_mask=vision_expert_mask,
                vision_image=torch.randn(b, 3, size[0], size[1], generator=g),
                vision_input_ids=torch.zeros(b, 1, dtype=torch.long), vision_position_ids=None,
                vision_attention_mask=torch.ones(b, 1))


class ByteTokenizer:
    """One token per UTF-8 byte (id = byte + 3; unk 0, bos 1, eos 2): a tokenizer that changes no text, so
    parity checks through it see every character and space (sentencepiece folds runs of spaces)."""
    bos_token_id, eos_token_id, pad_token_id, vocab_size = 1, 2, 0, 259

    def encode(self, text, add_special_tokens=True):
        ids = [b + 3 for b in text.encode("utf-8")]
        return [self.bos_token_id] + ids if add_special_tokens else ids
